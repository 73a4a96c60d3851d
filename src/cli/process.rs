//! How the process starts and ends, whatever the verb: the answer format known
//! before parsing, panics, SIGINT/SIGTERM, and the one failure report (text on
//! stderr, or exactly one JSON object on stdout).

use endsys_core::Doctor;

use super::{CliError, Output, OutputFormat};

/// `--output json` / `-o json` among the raw arguments: known before parsing,
/// so that argument errors and panics can answer in JSON too.
pub fn wants_json(args: &[std::ffi::OsString]) -> bool {
    let args: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    args.windows(2)
        .any(|w| (w[0] == "--output" || w[0] == "-o") && w[1] == "json")
        || args
            .iter()
            .any(|a| *a == "--output=json" || *a == "-ojson" || *a == "-o=json")
}

/// Any panic, on any thread, ends the process with exit code 101 and says so:
/// a panicked worker must never leave a run waiting forever on what it would
/// have done.
pub fn exit_on_panic(json: bool) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let msg = "internal error (a bug in endsys-bootstrap; the message above says where); the run stopped";
        let next = "run the same command again (it resumes from the real state); report the message above if it repeats";
        if json {
            println!(
                "{}",
                serde_json::json!({"event": "error", "error": msg, "likely_cause": info.to_string(), "next_action": next, "exit_code": 101})
            );
        } else {
            eprintln!("error: {msg}\n  next action:  {next}");
        }
        std::process::exit(101);
    }));
}

/// The first SIGINT or SIGTERM; never resolves if signals cannot be watched.
pub async fn signalled() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    }
    #[cfg(not(unix))]
    {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "SIGINT",
            Err(_) => std::future::pending().await,
        }
    }
}

/// A failure: text on stderr, or exactly one JSON object on stdout.
pub fn report(e: &CliError, out: &Output) {
    match out.format {
        OutputFormat::Json => println!("{}", e.to_json()),
        OutputFormat::Text => eprintln!("error: {}", e.explain()),
    }
}

/// An argument error under `--output json`: one JSON object, clap's exit code.
pub fn exit_with_json_usage_error(e: &clap::Error) -> ! {
    let text = e.render().to_string();
    let error = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    println!(
        "{}",
        serde_json::json!({"event": "error", "error": error, "likely_cause": "the command line does not match what the verb accepts",
            "next_action": "see `--help` of the verb", "exit_code": e.exit_code()})
    );
    std::process::exit(e.exit_code());
}
