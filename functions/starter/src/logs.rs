//! The function's logs: Lambda's advanced logging controls, as `lambda_runtime`'s default
//! subscriber reads them: `AWS_LAMBDA_LOG_FORMAT=JSON` gives one JSON object per line,
//! `AWS_LAMBDA_LOG_LEVEL` (else `RUST_LOG`, else `INFO`) sets the level; no timestamps (Lambda
//! adds them) and no targets.
//!
//! Why our own few lines rather than `lambda_runtime::tracing::init_default_subscriber`: that
//! one filters with tracing-subscriber's env-filter, whose regex engine is about 0.8 MB of the
//! 10 MB bootstrap; a level is all the function needs (`RUST_LOG` directives per module are
//! not read).

use std::str::FromStr;

use tracing_subscriber::filter::LevelFilter;

/// The level of `AWS_LAMBDA_LOG_LEVEL` / `RUST_LOG` (`INFO` when neither is a level).
pub fn level(lambda_level: Option<&str>, rust_log: Option<&str>) -> LevelFilter {
    lambda_level
        .or(rust_log)
        .and_then(|v| LevelFilter::from_str(v.trim()).ok())
        .unwrap_or(LevelFilter::INFO)
}

/// Installs the subscriber, from the process environment.
pub fn init() {
    let var = |name| std::env::var(name).ok();
    let level = level(var("AWS_LAMBDA_LOG_LEVEL").as_deref(), var("RUST_LOG").as_deref());
    let json = var("AWS_LAMBDA_LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("json"));
    let logs = tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        .with_max_level(level);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambdas_level_wins_then_rust_log_then_info() {
        assert_eq!(level(Some("DEBUG"), Some("error")), LevelFilter::DEBUG);
        assert_eq!(level(None, Some("warn")), LevelFilter::WARN);
        assert_eq!(level(None, None), LevelFilter::INFO);
        assert_eq!(level(Some("nonsense"), None), LevelFilter::INFO);
        assert_eq!(level(Some("trace"), None), LevelFilter::TRACE);
    }
}
