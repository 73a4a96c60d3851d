//! TODO-free placeholder; filled in by its issue.
