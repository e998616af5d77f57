use super::*;

fn parse(text: &str) -> Result<Config, Vec<Diagnostic>> {
    Config::from_text(Path::new("conf/halong.toml"), text, Vec::new())
}

fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, Vec<Diagnostic>> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_text(Path::new("conf/halong.toml"), text, env)
}

fn errors(text: &str) -> Vec<String> {
    parse(text)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn empty_file_gives_working_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.data.dir, PathBuf::from("conf/data"));
    assert_eq!(c.http.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(c.queue.kind, QueueKind::Embedded);
    assert!(c.listeners.is_empty());
    assert_eq!(c.routes_dir(), PathBuf::from("conf/routes"));
}

#[test]
fn shipped_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("halong.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = Config::from_text(&path, &text, Vec::new()).unwrap();
    assert!(c.listeners.iter().any(|l| l.kind == ListenerKind::Mllp));
}

#[test]
fn unknown_key_names_line_column_and_suggests() {
    let text = "[http]\nbnd = \"127.0.0.1:1\"\n";
    assert_eq!(
        errors(text),
        vec!["conf/halong.toml:2:1: unknown key `bnd` (did you mean `bind`?)"]
    );
}

#[test]
fn every_wrong_entry_is_reported_at_once() {
    let text = "[data]\n# Chỗ lưu dữ liệu\ncache_mb = 64\n\n[[listener]]\nname = \"lab\"\nkind = \"mllp\"\nbind = \"127.0.0.1:2575\"\nmax_connections = \"lots\"\nidle_timeout_secs = -5\n";
    let e = errors(text);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert_eq!(
        e[0],
        "conf/halong.toml:3:1: unknown key `cache_mb` (did you mean `cache_mib`?)"
    );
    assert!(
        e[1].starts_with("conf/halong.toml:9:19: invalid type: string \"lots\""),
        "{}",
        e[1]
    );
    assert!(e[2].starts_with("conf/halong.toml:10:21: "), "{}", e[2]);
    // A syntax error is one at a time.
    assert_eq!(errors("[http\nbnd = 1\n").len(), 1);
    // A wrong item on a later line of a value: reported once, not again and again.
    let text = "[[listener]]\nname = \"pacs\"\nkind = \"dicom\"\nbind = \"127.0.0.1:0\"\nallowed_callers = [\"CT1\",\n  5]\n";
    assert_eq!(errors(text).len(), 1, "{:#?}", errors(text));
}

#[test]
fn bad_values_name_their_position() {
    let text = "[[listener]]\nname = \"lab\"\nkind = \"mlp\"\nbind = \"0.0.0.0:2575\"\n";
    let e = errors(text);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("conf/halong.toml:3:8: unknown variant `mlp`"),
        "{}",
        e[0]
    );

    let example = "give IP:PORT, e.g. \"0.0.0.0:2575\" or \"127.0.0.1:8080\" (an IP address, not a host name; IPv6 in brackets: \"[::1]:2575\")";
    for (bind, problem) in [
        ("localhost", format!("\"localhost\" has no port: {example}")),
        (
            "0.0.0.0:99999",
            format!(
                "\"0.0.0.0:99999\": port \"99999\" must be a number from 0 to 65535; {example}"
            ),
        ),
        (
            "2575",
            format!("\"2575\" is a port without an IP address: {example}"),
        ),
        ("[::1]", format!("\"[::1]\" has no port: {example}")),
        ("::1", format!("\"::1\" has no port: {example}")),
        ("::1:2575", format!("\"::1:2575\" has no port: {example}")),
        (
            "localhost:2575",
            format!("\"localhost:2575\": \"localhost\" is not an IP address; {example}"),
        ),
    ] {
        let text = format!("[[listener]]\nname = \"lab\"\nkind = \"mllp\"\nbind = \"{bind}\"\n");
        assert_eq!(errors(&text), [format!("conf/halong.toml:4:8: {problem}")]);
    }
}

#[test]
fn a_table_or_key_given_twice_is_named() {
    assert_eq!(
        errors("[pipeline]\npriority = \"idle\"\n\n[pipeline]\npriority = \"normal\"\n"),
        vec!["conf/halong.toml:4:2: table [pipeline] appears twice; put its keys in the first [pipeline]"]
    );
    assert_eq!(
        errors("[http]\nbind = \"127.0.0.1:1\"\nbind = \"127.0.0.1:2\"\n"),
        vec!["conf/halong.toml:3:1: `bind` is set twice in the same table"]
    );
}

#[test]
fn pipeline_priority_defaults_to_idle_and_names_a_bad_value() {
    assert_eq!(parse("").unwrap().pipeline.priority, PipelinePriority::Idle);
    let c = parse("[pipeline]\npriority = \"normal\"\n").unwrap();
    assert_eq!(c.pipeline.priority, PipelinePriority::Normal);
    let e = errors("[pipeline]\npriority = \"low\"\n");
    assert!(
        e[0].starts_with(
            "conf/halong.toml:2:12: unknown variant `low`, expected `idle` or `normal`"
        ),
        "{}",
        e[0]
    );
    let c = parse_env("", &[("HALONG_PIPELINE__PRIORITY", "normal")]).unwrap();
    assert_eq!(c.pipeline.priority, PipelinePriority::Normal);
}

#[test]
fn cross_field_problems_are_all_reported() {
    let text = r#"
[[listener]]
name = "lab"
kind = "mllp"
bind = "127.0.0.1:2575"
ae_title = "X"

[[listener]]
name = "lab"
kind = "mllp"
bind = "127.0.0.1:2575"

[queue]
kind = "amqp"
"#;
    let e = errors(text);
    assert_eq!(
        e,
        vec![
            "conf/halong.toml:2:1: listener \"lab\": ae_title, allowed_callers, allowed_peers, max_pdu_bytes, accept_oversized_pdus and write_timeout_secs apply to kind = \"dicom\" only",
            "conf/halong.toml:8:1: duplicate listener name \"lab\"",
            "conf/halong.toml:8:1: listener \"lab\" binds 127.0.0.1:2575 like listener \"lab\"",
            "conf/halong.toml:13:1: queue kind \"amqp\" needs url = \"amqp://user:pass@host:5672/%2f\"",
        ]
    );
}

#[test]
fn environment_overrides_scalars() {
    let text = "[http]\nbind = \"127.0.0.1:8080\"\n[[listener]]\nname = \"lab-1\"\nkind = \"mllp\"\nbind = \"127.0.0.1:2575\"\n";
    let c = parse_env(
        text,
        &[
            ("HALONG_HTTP__BIND", "127.0.0.1:9999"),
            ("HALONG_LISTENER__LAB_1__MAX_CONNECTIONS", "7"),
            ("HALONG_LOG__LOG_PHI", "true"),
            ("HALONG_DATA__DIR", "/var/lib/halong"),
            ("HALONG_LISTENER__LAB_1__FACILITY", "01001"),
            ("PATH", "/bin"),
        ],
    )
    .unwrap();
    // A facility code that looks like a number stays the code it is.
    assert_eq!(c.listeners[0].facility.as_deref(), Some("01001"));
    assert_eq!(c.http.bind.to_string(), "127.0.0.1:9999");
    assert_eq!(c.listeners[0].max_connections, 7);
    assert!(c.log.log_phi);
    assert_eq!(c.data.dir, PathBuf::from("/var/lib/halong"));
}

#[test]
fn environment_typos_are_errors() {
    let e = parse_env("", &[("HALONG_HTTP__BINDD", "x")]).unwrap_err();
    assert_eq!(e.len(), 1);
    let text = e[0].to_string();
    assert!(
        text.contains("HALONG_HTTP__BINDD") && text.contains("unknown field `bindd`"),
        "{text}"
    );

    let e = parse_env("", &[("HALONG_LISTENER__NOPE__BIND", "x")]).unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "conf/halong.toml: environment HALONG_LISTENER__NOPE__BIND: the config has no [[listener]]"
    );
}

#[test]
fn amqp_queue_keys_have_defaults_and_roles_parse() {
    let c =
        parse("[queue]\nkind = \"amqp\"\nurl = \"amqps://edge:pw@mq:5671/%2f\"\nrole = \"edge\"\n")
            .unwrap();
    assert_eq!(c.queue.role, Role::Edge);
    assert_eq!(c.queue.prefetch, 512);
    assert_eq!(c.queue.publish_timeout_secs, 10);
    assert_eq!(c.queue.delivery_limit, 5);
    assert_eq!(parse("").unwrap().queue.role, Role::All);
    let c = parse_env(
        "[queue]\nkind = \"amqp\"\nurl = \"amqp://h\"\n",
        &[
            ("HALONG_QUEUE__ROLE", "store"),
            ("HALONG_QUEUE__PREFETCH", "64"),
        ],
    )
    .unwrap();
    assert_eq!((c.queue.role, c.queue.prefetch), (Role::Store, 64));
}

#[test]
fn amqp_queue_problems_name_their_position() {
    assert_eq!(
        errors("[queue]\nkind = \"embedded\"\nrole = \"edge\"\n"),
        vec!["conf/halong.toml:3:1: role \"edge\" sends records through RabbitMQ: set [queue] kind = \"amqp\" and url, or use role = \"all\""]
    );
    let e = errors(
        "[queue]\nkind = \"amqp\"\nurl = \"http://mq\"\nprefix = \"a b\"\nprefetch = 0\ndelivery_limit = 0\n",
    );
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(
        e[0].starts_with("conf/halong.toml:4:1: prefix must be"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("conf/halong.toml:5:1: prefetch must be at least 1"),
        "{e:?}"
    );
    assert!(
        e[2].starts_with("conf/halong.toml:6:1: delivery_limit must be"),
        "{e:?}"
    );
    assert!(
        e[3].starts_with("conf/halong.toml:3:1: url must start with amqp://"),
        "{e:?}"
    );
    assert!(errors("[queue]\nrole = \"stor\"\n")[0].contains("unknown variant `stor`"));
}

#[test]
fn retention_keys_are_checked_with_their_position() {
    let dicom = "[[listener]]\nname = \"pacs\"\nkind = \"dicom\"\nbind = \"127.0.0.1:11112\"\n";
    let c = parse(&format!(
        "[data]\n# dicom_retention_days = 1\njournal_retention_days = 30\ndicom_retention_days = 90\n{dicom}"
    ))
    .unwrap();
    assert_eq!(
        (c.data.journal_retention_days, c.data.dicom_retention_days),
        (30, 90)
    );
    assert_eq!(parse("").unwrap().data.dicom_retention_days, 0);

    // Journal retention with a DICOM listener and files kept forever: the DICOM entries
    // could never go, so the operator is told (at the key, not at the comment naming it).
    let e = errors(&format!(
        "[data]\n# journal_retention_days = 1\n  journal_retention_days = 30\n{dicom}"
    ));
    assert_eq!(
        e,
        vec!["conf/halong.toml:3:3: journal_retention_days = 30 would have to keep the journal entries of DICOM files kept forever (a DICOM entry goes only after its file): set [data] dicom_retention_days too (e.g. 30), or journal_retention_days = 0"]
    );
    // Without a DICOM listener the journal alone is fine.
    parse("[data]\njournal_retention_days = 30\n").unwrap();

    let e = errors("[data]\ndicom_retention_days = 36501\njournal_retention_days = 99999999999\n");
    assert_eq!(
        e,
        vec![
            "conf/halong.toml:3:1: journal_retention_days must be at most 36500 (0 keeps everything)",
            "conf/halong.toml:2:1: dicom_retention_days must be at most 36500 (0 keeps everything)",
        ]
    );
    let e = errors("[data]\ndicom_retention_days = -1\n");
    assert!(e[0].starts_with("conf/halong.toml:2:24:"), "{e:?}");

    // Messages in error: kept at least as long as stored ones, and only with journal
    // retention (alone it would do nothing).
    let c = parse("[data]\njournal_retention_days = 30\nerror_retention_days = 90\n").unwrap();
    assert_eq!(c.data.error_retention_days, 90);
    assert_eq!(parse("").unwrap().data.error_retention_days, 0);
    assert_eq!(
        errors("[data]\njournal_retention_days = 30\nerror_retention_days = 7\n"),
        vec!["conf/halong.toml:3:1: error_retention_days = 7: messages in error would go before the stored ones: give at least journal_retention_days (30), or 0 to keep them"]
    );
    assert_eq!(
        errors("[data]\nerror_retention_days = 90\n"),
        vec!["conf/halong.toml:2:1: error_retention_days = 90: it applies only with journal retention: set [data] journal_retention_days too (at most as many days), or error_retention_days = 0"]
    );

    // The record store's cache: a default, a chosen size, and a size out of range.
    assert_eq!(parse("").unwrap().data.cache_mib, 256);
    assert_eq!(
        parse("[data]\ncache_mib = 1024\n").unwrap().data.cache_mib,
        1024
    );
    assert_eq!(
        errors("[data]\ndir = \"d\"\ncache_mib = 8\n"),
        vec!["conf/halong.toml:3:1: cache_mib = 8 is out of range: give 16 to 65536 (MiB; default 256)"]
    );
}

#[test]
fn a_log_level_that_would_silence_the_log_is_refused() {
    for ok in [
        "info",
        "DEBUG",
        "warn,halong=debug",
        "info, lapin=off",
        "halong::pipeline=trace",
        "3",
        "halong=4",
    ] {
        assert!(parse(&format!("[log]\nlevel = \"{ok}\"\n")).is_ok(), "{ok}");
    }
    assert_eq!(
        errors("[log]\nlevel = \"verbose\"\n"),
        vec!["conf/halong.toml:2:1: log level \"verbose\": \"verbose\" is not a level; give one of off, error, warn, info, debug, trace, optionally followed by MODULE=LEVEL items (e.g. \"info,lapin=warn\")"]
    );
    let e = errors("[log]\nlevel = \"info,halong=warning\"\n");
    assert!(
        e[0].contains("\"warning\" is not a level (did you mean \"warn\"?)"),
        "{e:?}"
    );
    let e = errors("[log]\nlevel = \"=debug\"\n");
    assert!(e[0].contains("\"=debug\" does not name a module"), "{e:?}");
}

#[test]
fn a_listeners_facility_is_a_plain_code() {
    let text = r#"
[[listener]]
name = "lab"
kind = "mllp"
bind = "127.0.0.1:2575"
facility = "TTYT_HUYEN"

[[listener]]
name = "pacs"
kind = "dicom"
bind = "127.0.0.1:11112"
"#;
    let config = parse(text).unwrap_or_else(|d| panic!("{}", crate::diag::render(&d)));
    let facilities: Vec<_> = config.facilities().into_iter().collect();
    assert_eq!(facilities, [("lab".to_string(), "TTYT_HUYEN".to_string())]);
    for bad in ["", " BV", "BV^1"] {
        let e = errors(&text.replace("TTYT_HUYEN", bad));
        assert_eq!(
            e,
            ["conf/halong.toml:2:1: listener \"lab\": facility must be a code without surrounding spaces and without | ^ ~ \\ &, e.g. \"BVDK_TINH\""],
            "{bad:?}"
        );
    }
}
