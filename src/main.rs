//! The `halong` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use halong::config::Config;
use halong::diag;
use halong::pipeline::Rules;

// glibc's allocator fragments badly when one thread builds records and another frees
// them; mimalloc keeps the pipeline's allocation cost flat.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// halong: an integration engine for hospitals. HL7 v2 over MLLP in, durable before
/// every ACK, mapped to FHIR R4 records, searchable over HTTP.
#[derive(Parser)]
#[command(name = "halong", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine: listeners, journal, mapping, record store and HTTP API.
    Serve {
        /// The configuration file; routes/ and mappings/ are read beside it.
        #[arg(long, short, default_value = "halong.toml", env = "HALONG_CONFIG")]
        config: PathBuf,
        /// What this process runs (overrides [queue] role): `all` takes messages in and
        /// keeps the records; `edge` takes messages in and publishes records to RabbitMQ;
        /// `store` consumes records from RabbitMQ into the record store and serves /fhir.
        /// edge and store need [queue] kind = "amqp".
        #[arg(long, value_parser = ["all", "edge", "store"])]
        role: Option<String>,
    },
    /// Check halong.toml, every route and every mapping; print all problems, exit 1 on any.
    Check {
        #[arg(long, short, default_value = "halong.toml", env = "HALONG_CONFIG")]
        config: PathBuf,
    },
    /// Map message files to FHIR resources and print them as a JSON array (no engine
    /// needed). On stderr, a loss report per file: the segments and fields present in the
    /// message that the mapping did not read.
    Map {
        #[arg(long, short, default_value = "halong.toml", env = "HALONG_CONFIG")]
        config: PathBuf,
        /// Use this route's mapping.
        #[arg(long, conflicts_with_all = ["mapping"])]
        route: Option<String>,
        /// Use this mapping (mappings/NAME.toml) directly.
        #[arg(long)]
        mapping: Option<String>,
        /// Route as if the message came in on this listener (default: the first route whose
        /// message pattern fits, whatever its listener); its `facility` is what the
        /// mapping's facility() gives (without it, the facility of the route's listener
        /// when the route takes messages from one). With --mapping, only its facility.
        #[arg(long, conflicts_with = "route")]
        listener: Option<String>,
        /// HL7 v2 message files, or directories of them (*.hl7, *.txt, *.msg). Each
        /// message of a file is mapped on its own (reported as FILE#n).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run every mapping's test cases (mappings/cases/<mapping>/<case>.hl7 with the
    /// expected <case>.json beside it); print a diff for each failure, exit 1 on any.
    Test {
        #[arg(long, short, default_value = "halong.toml", env = "HALONG_CONFIG")]
        config: PathBuf,
    },
    /// Send HL7 v2 files over MLLP and print each ACK code; with --repeat or
    /// --concurrency, a load generator that reports messages/s and ACK latency.
    Send {
        /// Message files or directories of them (*.hl7, *.txt, *.msg).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// HOST:PORT of the MLLP listener.
        #[arg(long)]
        to: String,
        /// Send the whole set this many times.
        #[arg(long, default_value_t = 1)]
        repeat: u64,
        /// Connections to send over in parallel.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Give each sent message its own MSH-10 (control id), so repeats are new messages.
        #[arg(long)]
        unique_ids: bool,
        /// Seconds to wait for each ACK.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Ask the running engine to process messages again with the current routes and
    /// mappings (after a fix): the given ids, or every message matching --status and the
    /// other filters. Prints each message's new status; exit 1 if any is still failing.
    /// Uses [http] bind and token from the config (token also from HALONG_HTTP__TOKEN).
    Replay {
        #[arg(long, short, default_value = "halong.toml", env = "HALONG_CONFIG")]
        config: PathBuf,
        /// Replay every message with this status (error or unrouted, usually).
        #[arg(long, required_unless_present = "ids", conflicts_with = "ids")]
        status: Option<String>,
        /// Only messages of this route.
        #[arg(long, requires = "status")]
        route: Option<String>,
        /// Only messages from this listener.
        #[arg(long, requires = "status")]
        listener: Option<String>,
        /// Only messages of this type, e.g. ORU^R01 or ADT^*.
        #[arg(long = "type", requires = "status")]
        message_type: Option<String>,
        /// Message ids (as in /api/messages).
        ids: Vec<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, role } => serve(config, role),
        Command::Check { config } => check(&config),
        Command::Map {
            config,
            route,
            mapping,
            listener,
            files,
        } => map(&config, route, mapping, listener, &files),
        Command::Test { config } => test(&config),
        Command::Send {
            files,
            to,
            repeat,
            concurrency,
            unique_ids,
            timeout,
        } => send(&files, to, repeat, concurrency, unique_ids, timeout),
        Command::Replay {
            config,
            status,
            route,
            listener,
            message_type,
            ids,
        } => replay(&config, status, route, listener, message_type, &ids),
    }
}

fn replay(
    path: &std::path::Path,
    status: Option<String>,
    route: Option<String>,
    listener: Option<String>,
    message_type: Option<String>,
    ids: &[u64],
) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if config.http.tls_cert.is_some() {
        eprintln!("halong replay speaks plain HTTP; with [http] tls_cert set, use POST /api/messages/replay over HTTPS (e.g. curl)");
        return ExitCode::FAILURE;
    }
    let mut addr = config.http.bind;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'*' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let paths: Vec<String> = match status {
        Some(st) => {
            let mut q = vec![format!("status={}", enc(&st))];
            for (k, v) in [
                ("route", route),
                ("listener", listener),
                ("type", message_type),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", enc(&v)));
                }
            }
            vec![format!("/api/messages/replay?{}", q.join("&"))]
        }
        None => ids
            .iter()
            .map(|id| format!("/api/messages/{id}/replay"))
            .collect(),
    };
    let token = config.http.token.as_deref();
    let mut failing = false;
    for p in paths {
        let (code, body) = match http_post(addr, &p, token) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("cannot reach the engine at http://{addr}: {e} (is `halong serve` running with this config?)");
                return ExitCode::FAILURE;
            }
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if code != 200 {
            let why = v["error"].as_str().unwrap_or(body.as_str());
            eprintln!("{p}: HTTP {code}: {why}");
            failing = true;
            continue;
        }
        for r in v["replayed"].as_array().into_iter().flatten() {
            let st = r["status"].as_str().unwrap_or("?");
            match r["error"].as_str() {
                Some(e) if st != "stored" => println!("{} {st}: {e}", r["id"]),
                _ => println!("{} {st}", r["id"]),
            }
            failing |= matches!(st, "error" | "unrouted" | "skipped");
        }
        if v["more"] == true {
            println!("more messages match: run the same command again");
        }
    }
    if failing {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// POST with an empty body over HTTP/1.1; returns status and body.
fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|problems| {
        eprint!("{}", diag::render(&problems));
        ExitCode::from(1)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn serve(path: PathBuf, role: Option<String>) -> ExitCode {
    let mut config = match load_config(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(role) = role {
        config.queue.role = role.parse().expect("clap checked the role");
    }
    halong::telemetry::init(&config.log.level, config.log.log_phi);
    runtime().block_on(async move {
        // Before the engine starts: a SIGHUP or SIGTERM that comes while it starts (an
        // operator's reload, a service manager's stop) must not find the default action,
        // which ends the process.
        let signals = Signals::install();
        let engine = match halong::engine::Engine::start(config).await {
            Ok(e) => e,
            Err(e) => {
                eprintln!("halong: cannot start: {e}");
                return ExitCode::from(1);
            }
        };
        // Tests of the real process make the record store fail its syncs this way; a
        // release build has no such switch.
        #[cfg(debug_assertions)]
        if std::env::var_os("HALONG_TEST_FAIL_STORE_SYNC").is_some() {
            engine.store.faults().fail_sync(true);
        }
        tracing::info!(
            "halong is running; Ctrl-C or SIGTERM stops it, SIGHUP reloads routes and mappings"
        );
        let stop = wait_for_stop(&engine, signals).await;
        tracing::info!("stopping");
        engine.shutdown().await;
        match stop {
            Stop::Asked => ExitCode::SUCCESS,
            Stop::StoreFailed => {
                eprintln!("halong: stopped because the record store could not make records durable (see the log); start it again once the disk is sound: the messages it had not stored are stored then");
                ExitCode::from(1)
            }
        }
    })
}

/// Why `serve` stops.
enum Stop {
    /// Ctrl-C or SIGTERM.
    Asked,
    /// A sync of the record store failed: nothing more is made durable until the store
    /// is opened again, so the process ends and the service manager starts it anew.
    StoreFailed,
}

/// Resolves once a sync of the record store has failed (checked every second).
async fn store_failed(engine: &halong::engine::Engine) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        if engine.store.is_failing() {
            return;
        }
    }
}

/// The signals `serve` handles, taken from the default actions.
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            hup: signal(SignalKind::hangup()).expect("SIGHUP handler"),
        }
    }
}

/// Waits for Ctrl-C or SIGTERM, or for the record store to fail a sync; on SIGHUP
/// reloads routes and mappings (an invalid set is refused and logged, and the running
/// set stays). A signal that came while the engine started is taken now.
async fn wait_for_stop(engine: &halong::engine::Engine, signals: Signals) -> Stop {
    let Signals { mut term, mut hup } = signals;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Stop::Asked,
            _ = term.recv() => return Stop::Asked,
            _ = store_failed(engine) => {
                tracing::error!("the record store failed a sync: records it wrote since its last good sync may not be on disk; stopping, so that a restart (the service manager's) reopens it and stores those messages again from the journal");
                return Stop::StoreFailed;
            }
            _ = hup.recv() => match engine.reload() {
                Ok(rules) => tracing::info!(
                    routes = rules.routes.routes().len(),
                    mappings = rules.mappings.names().count(),
                    "SIGHUP: routes and mappings reloaded"
                ),
                Err(problems) => tracing::error!(
                    problems = %diag::render(&problems).trim_end(),
                    "SIGHUP: reload refused; the running routes and mappings stay"
                ),
            },
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let report = |problems: &[diag::Diagnostic]| {
        eprint!("{}", diag::render(problems));
        eprintln!(
            "{} problem{} found",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        ExitCode::from(1)
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(mut problems) => {
            // The routes and mappings beside a config that does not load are checked
            // too, so that every problem shows at once; `from` is checked against the
            // listeners that can be read.
            let base = Config::base_dir_of(path);
            // A config that cannot be read names no listeners: they are unknown.
            let text = std::fs::read_to_string(path).ok();
            let listeners = text.as_deref().and_then(Config::listener_names_in);
            if base.join("routes").is_dir() || base.join("mappings").is_dir() {
                let rules = Rules::load_dirs(
                    &base.join("routes"),
                    &base.join("mappings"),
                    listeners.as_deref(),
                );
                problems.extend(rules.err().unwrap_or_default());
            }
            return report(&problems);
        }
    };
    if !config.queue.role.takes_messages() {
        println!(
            "{}: ok (role \"{}\" reads no routes or mappings)",
            path.display(),
            config.queue.role.as_str()
        );
        return ExitCode::SUCCESS;
    }
    match Rules::load(&config) {
        Ok(rules) => {
            println!(
                "{}: ok ({} listeners, {} routes, {} mappings)",
                path.display(),
                config.listeners.len(),
                rules.routes.routes().len(),
                rules.mappings.names().count()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => report(&problems),
    }
}

fn test(path: &std::path::Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rules = match Rules::load(&config) {
        Ok(r) => r,
        Err(problems) => {
            eprint!("{}", diag::render(&problems));
            return ExitCode::from(1);
        }
    };
    let dir = halong::mapping::cases::cases_dir(&config.mappings_dir());
    let results = halong::mapping::cases::run_cases(&rules.mappings, &dir);
    let mut failed = 0;
    for r in &results {
        match &r.failure {
            None => println!("ok      {}/{}", r.mapping, r.case),
            Some(why) => {
                failed += 1;
                println!("FAILED  {}/{}", r.mapping, r.case);
                for line in why.lines() {
                    println!("        {line}");
                }
            }
        }
    }
    let without: Vec<&str> = rules
        .mappings
        .names()
        .filter(|m| !results.iter().any(|r| r.mapping == *m))
        .collect();
    if !without.is_empty() {
        println!("mappings without cases: {}", without.join(", "));
    }
    println!(
        "{} cases: {} passed, {failed} failed",
        results.len(),
        results.len() - failed
    );
    if failed > 0 || results.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn map(
    path: &std::path::Path,
    route: Option<String>,
    mapping: Option<String>,
    listener: Option<String>,
    files: &[PathBuf],
) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rules = match Rules::load(&config) {
        Ok(r) => r,
        Err(problems) => {
            eprint!("{}", diag::render(&problems));
            return ExitCode::from(1);
        }
    };
    let hint = |word: &str, names: Vec<&str>| {
        diag::did_you_mean(word, names.iter().copied())
            .map(|n| format!(" (did you mean \"{n}\"?)"))
            .unwrap_or_default()
    };
    if let Some(r) = &route {
        if rules.routes.get(r).is_none() {
            let names = rules.routes.routes().iter().map(|r| r.name.as_str());
            let hint = hint(r, names.collect());
            eprintln!("halong map: no route named \"{r}\"{hint}");
            return ExitCode::from(2);
        }
    }
    if let Some(m) = &mapping {
        if rules.mappings.get(m).is_none() {
            let hint = match halong::mapping::not_a_mapping(m) {
                Some(what) => what.to_string(),
                None => hint(m, rules.mappings.names().collect()),
            };
            eprintln!(
                "halong map: no mapping named \"{m}\" in {}{hint}",
                config.mappings_dir().display()
            );
            return ExitCode::from(2);
        }
    }
    if let Some(l) = &listener {
        let names = config.listener_names();
        if !names.contains(l) {
            let hint = hint(l, names.iter().map(String::as_str).collect());
            eprintln!(
                "halong map: no listener named \"{l}\" in {}{hint}",
                path.display()
            );
            return ExitCode::from(2);
        }
    }
    let files = match halong::send::message_files(files) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("halong map: {e}");
            return ExitCode::from(1);
        }
    };
    if files.is_empty() {
        eprintln!("halong map: no messages found (a directory is read for *.hl7, *.txt and *.msg)");
        return ExitCode::from(1);
    }
    let mut all = Vec::new();
    let mut failed = 0;
    for file in &files {
        let messages = match std::fs::read(file) {
            // A file of several messages maps each (named FILE#n); anything else goes to
            // the parser whole, which says what it is (a batch, not HL7, ...).
            Ok(data) if starts_with_msh(&data) => halong::send::messages_of(file, &data),
            Ok(bytes) => Ok(vec![halong::send::Outgoing {
                origin: file.display().to_string(),
                bytes,
            }]),
            Err(e) => Err(format!("{}: cannot read: {e}", file.display())),
        };
        let messages = match messages {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{e}");
                failed += 1;
                continue;
            }
        };
        for halong::send::Outgoing { origin, bytes } in messages {
            match map_one(
                &rules,
                &origin,
                &bytes,
                route.as_deref(),
                mapping.as_deref(),
                listener.as_deref(),
            ) {
                Ok(mut records) => all.append(&mut records),
                Err(e) => {
                    eprintln!("{origin}: {e}");
                    failed += 1;
                }
            }
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&all).expect("records serialize")
    );
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Whether the first line that is not blank (after a byte order mark) is an MSH segment.
fn starts_with_msh(data: &[u8]) -> bool {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let start = data.iter().position(|b| !b.is_ascii_whitespace());
    start.is_some_and(|i| data[i..].starts_with(b"MSH"))
}

fn map_one(
    rules: &Rules,
    origin: &str,
    raw: &[u8],
    route: Option<&str>,
    mapping: Option<&str>,
    listener: Option<&str>,
) -> Result<Vec<serde_json::Value>, String> {
    let msg = halong::hl7::parse(raw).map_err(|e| format!("cannot parse: {e}"))?;
    // The listener whose `facility` the mapping's facility() gives: the one named, else
    // the only one the route takes messages from.
    let mut via = listener.map(str::to_string);
    let mut from_route = |r: &halong::routes::Route| {
        if via.is_none() && r.from.len() == 1 {
            via = Some(r.from[0].clone());
        }
    };
    let mapping_name = match (route, mapping) {
        (_, Some(m)) => m.to_string(),
        (Some(r), None) => {
            let r = rules.routes.get(r).expect("checked");
            from_route(r);
            r.mapping.clone()
        }
        (None, None) => {
            let h = msg.header();
            let found = match listener {
                Some(l) => rules.routes.find(l, h),
                None => rules.routes.routes().iter().find(|r| r.matches_message(h)),
            };
            let from = listener
                .map(|l| format!(" from listener \"{l}\""))
                .unwrap_or_default();
            let found = found.ok_or_else(|| format!("no route takes {}{from}", h.message_type))?;
            from_route(found);
            found.mapping.clone()
        }
    };
    let m = rules
        .mappings
        .get(&mapping_name)
        .ok_or_else(|| format!("no mapping \"{mapping_name}\""))?;
    let ctx = halong::mapping::RunContext {
        source: format!("file:{origin}"),
        facility: via
            .and_then(|l| rules.facilities.get(&l).cloned())
            .unwrap_or_default(),
    };
    let (result, unread) = m.run_with_loss_report(&msg, &ctx);
    let records = halong::record::to_values(&result.map_err(|e| e.to_string())?);
    if unread.is_empty() {
        eprintln!("{origin}: mapping \"{mapping_name}\" read every field");
    } else {
        eprintln!(
            "{origin}: mapping \"{mapping_name}\" did not read {} field{}: {}",
            unread.len(),
            if unread.len() == 1 { "" } else { "s" },
            unread.join(", ")
        );
    }
    Ok(records)
}

fn send(
    files: &[PathBuf],
    to: String,
    repeat: u64,
    concurrency: usize,
    unique_ids: bool,
    timeout: u64,
) -> ExitCode {
    let messages = match halong::send::load_messages(files) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("halong send: {e}");
            return ExitCode::from(2);
        }
    };
    let load = repeat > 1 || concurrency > 1;
    let count = messages.len() as u64 * repeat;
    if load {
        eprintln!("sending {count} messages over {concurrency} connection(s) to {to}");
    }
    let opts = halong::send::SendOptions {
        to,
        repeat: repeat.max(1),
        concurrency: concurrency.max(1),
        unique_ids,
        timeout: Duration::from_secs(timeout),
        load,
    };
    let summary = match runtime().block_on(halong::send::run(messages, opts)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("halong send: {e}");
            return ExitCode::from(1);
        }
    };
    if load {
        println!(
            "{} messages in {:.2} s: {:.0} msg/s; ACK latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} AA/CA, {} other",
            summary.sent,
            summary.elapsed.as_secs_f64(),
            summary.rate(),
            summary.percentile_ms(0.50),
            summary.percentile_ms(0.99),
            summary.percentile_ms(1.0),
            summary.accepted,
            summary.other
        );
    }
    if summary.other > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
