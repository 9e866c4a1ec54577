//! Logging for both binaries: text or JSON lines on stderr, filtered by `TRIBUTARY_LOG`.

/// Sets up logging for a binary: `TRIBUTARY_LOG` is the filter (default `default_filter`),
/// `TRIBUTARY_LOG_FORMAT=json` gives one JSON object per line (with the span fields — pipeline,
/// run, task, shard — on every line of task work); anything else gives text. Logs go to stderr.
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIBUTARY_LOG")
        .unwrap_or_else(|_| default_filter.into());
    let json = std::env::var("TRIBUTARY_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
}
