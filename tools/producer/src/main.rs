//! `producer`: enqueues work into an SQS queue with `SendMessageBatch`.
//!
//! Exit codes: 0 every message was sent; 1 some were not (each is listed on stderr with its
//! id and reason) or the input could not be read to its end; 2 usage or setup error.

use std::io::{BufReader, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::QueueAttributeName;
use clap::{ArgGroup, Parser};
use indicatif::{ProgressBar, ProgressStyle};

use producer::batch::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
use producer::input::{spawn_reader, Decoration, GenerateConfig, Generator, Source};
use producer::send::{self, Report, SendConfig};
use producer::sqs::{is_fifo, resolve_queue_url, SqsSender};

/// Most failed messages listed one per line on stderr.
const MAX_LISTED_FAILURES: usize = 1000;
/// Most failed messages listed in the `--summary-json` line.
const MAX_JSON_FAILURES: usize = 100;

/// Enqueue messages into an SQS queue (SendMessageBatch, 10 per call, several calls in flight).
///
/// The AWS endpoint, region and credentials come from the usual AWS environment
/// (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...) unless given as flags.
#[derive(Parser, Debug)]
#[command(name = "producer", version)]
#[command(group(ArgGroup::new("queue").required(true).args(["queue_url", "queue_name"])))]
#[command(group(ArgGroup::new("source").required(true).args(["file", "stdin", "generate", "input"])))]
struct Cli {
    /// Queue URL.
    #[arg(long, value_name = "URL")]
    queue_url: Option<String>,
    /// Queue name, resolved with GetQueueUrl.
    #[arg(long, value_name = "NAME")]
    queue_name: Option<String>,

    /// JSON-lines file: each non-blank line is one message body, sent verbatim ("-": stdin).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Read JSON lines from stdin.
    #[arg(long)]
    stdin: bool,
    /// Generate N synthetic messages {"id":"<prefix><seq>","payload":"..."}.
    #[arg(long, value_name = "N")]
    generate: Option<u64>,
    /// Same as --file: a JSON-lines file, or "-" for stdin.
    #[arg(value_name = "INPUT")]
    input: Option<PathBuf>,

    /// Generated messages: pad each body with random characters to at least BYTES bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 0, requires = "generate")]
    size: usize,
    /// Generated messages: fraction (0 to 1) of deliberately bad bodies (not JSON; they contain
    /// the word "bad"). Exactly round(N x FRACTION) are bad.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0, requires = "generate")]
    bad_share: f64,
    /// Generated messages: seed of the random choices (which are bad, the padding).
    #[arg(long, default_value_t = 1, requires = "generate")]
    seed: u64,
    /// Generated messages: prefix of every id (e.g. a run id, so that reruns get new ids).
    #[arg(long, value_name = "PREFIX", default_value = "", requires = "generate")]
    id_prefix: String,

    /// Name of a String message attribute carrying each message's id (the body's "id" field,
    /// else "line-<n>").
    #[arg(long, value_name = "NAME", default_value = "key")]
    attribute: String,
    /// Send no message attribute.
    #[arg(long, conflicts_with = "attribute")]
    no_attribute: bool,
    /// FIFO queues: spread messages over N message groups g0..g(N-1) by input position
    /// (default 1). The deduplication id is the message id.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    group_count: Option<u32>,

    /// Pace: at most this many messages per second on average (default: as fast as possible).
    #[arg(long, value_name = "MSGS_PER_SECOND")]
    rate: Option<f64>,
    /// SendMessageBatch calls in flight at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    in_flight: u16,
    /// Sends of one message at most, the first included, before it is reported as failed.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: u32,

    /// No progress bar (it is also hidden when stdout is not a terminal).
    #[arg(long, short)]
    quiet: bool,
    /// Print the summary as one JSON line on stdout instead of a sentence.
    #[arg(long)]
    summary_json: bool,

    #[command(flatten)]
    aws: local_stack::cli::AwsArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    local_stack::cli::init_tracing("warn");
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("producer: {message}");
            ExitCode::from(2)
        }
    }
}

fn open_source(cli: &Cli) -> Result<(Source, Option<u64>), String> {
    if let Some(count) = cli.generate {
        if !(0.0..=1.0).contains(&cli.bad_share) {
            return Err(format!("--bad-share must be between 0 and 1, got {}", cli.bad_share));
        }
        let generator = Generator::new(GenerateConfig {
            count,
            size: cli.size,
            bad_share: cli.bad_share,
            seed: cli.seed,
            id_prefix: cli.id_prefix.clone(),
        })
        .map_err(|e| e.to_string())?;
        return Ok((Source::Generate(Box::new(generator)), Some(count)));
    }
    let path = cli.file.as_ref().or(cli.input.as_ref());
    match path {
        Some(path) if path.as_os_str() != "-" => {
            let file = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            Ok((Source::Lines(Box::new(BufReader::new(file))), None))
        }
        _ => Ok((Source::Lines(Box::new(BufReader::new(std::io::stdin()))), None)),
    }
}

fn progress_bar(cli: &Cli, total: Option<u64>) -> ProgressBar {
    if cli.quiet || !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(n) => (
            ProgressBar::new(n),
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} sent, {per_sec}",
        ),
        None => (
            ProgressBar::no_length(),
            "{spinner} [{elapsed_precise}] {pos} sent, {per_sec}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

async fn run(cli: Cli) -> Result<bool, String> {
    if let Some(rate) = cli.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!(
                "--rate must be a positive number of messages per second, got {rate}"
            ));
        }
    }
    let sdk_config = cli.aws.sdk_loader().load().await;
    let client = aws_sdk_sqs::Client::new(&sdk_config);

    let queue_url = resolve_queue_url(&client, cli.queue_url.as_deref(), cli.queue_name.as_deref()).await?;
    client
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| format!("queue {queue_url}: {}", DisplayErrorContext(&e)))?;
    let fifo = is_fifo(&queue_url);
    if cli.group_count.is_some() && !fifo {
        return Err(format!(
            "--group-count needs a FIFO queue (name ending in .fifo); {queue_url} is not one"
        ));
    }
    let decoration = Decoration {
        attribute: (!cli.no_attribute && !cli.attribute.is_empty()).then(|| cli.attribute.clone()),
        fifo_groups: fifo.then(|| cli.group_count.unwrap_or(1)),
    };

    let (source, total) = open_source(&cli)?;
    let input = spawn_reader(source, decoration, 1024).map_err(|e| format!("cannot start the input reader: {e}"))?;
    // At a slow pace, smaller batches spread the messages out instead of bursts of ten.
    let max_batch_entries = cli
        .rate
        .map_or(MAX_BATCH_ENTRIES, |r| (r.floor() as usize).clamp(1, MAX_BATCH_ENTRIES));
    let config = SendConfig {
        in_flight: usize::from(cli.in_flight),
        max_attempts: cli.max_attempts,
        rate: cli.rate,
        max_batch_entries,
        max_batch_bytes: MAX_BATCH_BYTES,
        ..SendConfig::default()
    };
    let progress = progress_bar(&cli, total);
    let sender = SqsSender::new(client, queue_url.clone());
    let report = send::run(&sender, input, &config, &progress).await;
    progress.finish_and_clear();
    print_report(&cli, &queue_url, &report);
    Ok(report.is_success())
}

fn print_report(cli: &Cli, queue_url: &str, report: &Report) {
    for failure in report.failed.iter().take(MAX_LISTED_FAILURES) {
        eprintln!(
            "not sent: id={} seq={} code={} attempts={}: {}",
            failure.id, failure.seq, failure.code, failure.attempts, failure.reason
        );
    }
    if report.failed.len() > MAX_LISTED_FAILURES {
        eprintln!("... and {} more not sent", report.failed.len() - MAX_LISTED_FAILURES);
    }
    if let Some(error) = &report.input_error {
        eprintln!("input stopped early: {error}");
    }
    if cli.summary_json {
        let summary = serde_json::json!({
            "queue_url": queue_url,
            "read": report.read,
            "sent": report.sent,
            "failed": report.failed.len(),
            "calls": report.calls,
            "retried": report.retried,
            "elapsed_seconds": report.elapsed.as_secs_f64(),
            "messages_per_second": report.messages_per_second(),
            "input_error": report.input_error,
            "failures": report.failed.iter().take(MAX_JSON_FAILURES).collect::<Vec<_>>(),
        });
        println!("{summary}");
    } else {
        println!(
            "sent {} of {} messages to {} in {:.2} s ({:.1} msg/s): {} calls, {} re-sent, {} not sent",
            report.sent,
            report.read,
            queue_url,
            report.elapsed.as_secs_f64(),
            report.messages_per_second(),
            report.calls,
            report.retried,
            report.failed.len()
        );
    }
}
