//! The error doctor: every error the operator can see says what happened (its
//! `Display`), the likely cause and the next action, in one wording everywhere.

use std::fmt::Write as _;

/// What an error tells the operator beyond what happened.
pub trait Doctor: std::error::Error {
    /// The most likely cause, in one sentence.
    fn likely_cause(&self) -> String;

    /// What the operator should do next.
    fn next_action(&self) -> String;

    /// Bad input (exit code 2) rather than a failed operation (exit code 1).
    fn is_input_error(&self) -> bool {
        false
    }

    /// What failed, the likely cause and the next action.
    fn explain(&self) -> String {
        explain(self)
    }
}

/// The one wording of a diagnosis: the error, then `likely cause:` and
/// `next action:` lines (empty ones left out).
pub fn explain<E: Doctor + ?Sized>(e: &E) -> String {
    let mut out = e.to_string();
    let cause = e.likely_cause();
    let next = e.next_action();
    if !cause.is_empty() {
        let _ = write!(out, "\n  likely cause: {cause}");
    }
    if !next.is_empty() {
        let _ = write!(out, "\n  next action:  {next}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("node1: refused")]
    struct Refused;

    impl Doctor for Refused {
        fn likely_cause(&self) -> String {
            "nothing listens".into()
        }
        fn next_action(&self) -> String {
            String::new()
        }
    }

    #[test]
    fn explain_names_cause_and_leaves_out_empty_lines() {
        assert_eq!(
            Refused.explain(),
            "node1: refused\n  likely cause: nothing listens"
        );
        assert!(!Refused.is_input_error());
    }
}
