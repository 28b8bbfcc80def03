//! `egress explain`: how the loaded policies decide one connection, and why.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use egress_common::{NO_RULE, verdict};

use crate::control::{
    client::{SocketArgs, call_as},
    protocol::{ExplainParams, Explained, Method},
};
use crate::eval::{self, Explanation};
use crate::policy::{
    self, Action, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Mode, PolicySet, RuleInfo,
};

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Policy files or directories (default: ask the running agent about the policy in
    /// force, over its control socket).
    #[arg(long = "policy", value_name = "PATH")]
    pub policy: Vec<PathBuf>,
    /// Cgroup of the workload, relative to the cgroup2 root (default `/`).
    #[arg(long, conflicts_with = "unit", value_name = "PATH")]
    pub cgroup: Option<String>,
    /// systemd unit of the workload (its cgroup is taken to be `/NAME`).
    #[arg(long, value_name = "NAME")]
    pub unit: Option<String>,
    /// Owner uid of the socket.
    #[arg(long, default_value_t = 0)]
    pub uid: u32,
    /// Destination address of a connection the workload opens (egress).
    #[arg(
        long,
        value_name = "ADDR",
        required_unless_present = "from",
        conflicts_with = "from"
    )]
    pub to: Option<IpAddr>,
    /// Source address of a new inbound connection to the workload (ingress); `--port` is
    /// then the workload's local port. Needs `--policy`.
    #[arg(long, value_name = "ADDR")]
    pub from: Option<IpAddr>,
    /// A name the workload learned the destination address for from DNS (repeatable: the
    /// question name and every CNAME target of the answers); host rules match these.
    /// Needs `--policy`.
    #[arg(long = "host", value_name = "NAME", requires = "to")]
    pub host: Vec<String>,
    /// Destination port (TCP and UDP only).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// tcp, udp, icmp, icmpv6, or an IP protocol number.
    #[arg(long, default_value = "tcp")]
    pub protocol: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArgs,
}

pub fn run(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    run_to(args, &mut std::io::stdout().lock())
}

/// [`run`], writing to `out`.
pub fn run_to(args: &ExplainArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let protocol = parse_protocol(&args.protocol)?;
    let cgroup = match (&args.cgroup, &args.unit) {
        (Some(path), _) if !path.starts_with('/') => bail!("--cgroup must start with `/`"),
        (Some(path), _) => path.clone(),
        (None, Some(unit)) => format!("/{unit}"),
        (None, None) => "/".to_string(),
    };
    if let Some(src) = args.from {
        return run_ingress(args, &cgroup, src, protocol, out);
    }
    let Some(to) = args.to else {
        bail!("give --to ADDR (a connection the workload opens) or --from ADDR (one it accepts)");
    };
    let names = args
        .host
        .iter()
        .map(|h| eval::canonical_name(h).with_context(|| format!("--host `{h}` is not a DNS name")))
        .collect::<anyhow::Result<Vec<String>>>()?;
    if args.policy.is_empty() {
        let params = ExplainParams {
            cgroup,
            uid: args.uid,
            to,
            protocol,
            port: args.port,
            names,
        };
        let explained: Explained = call_as(&args.socket.socket, Method::Explain(params))?;
        if args.json {
            writeln!(out, "{}", explained.json)?;
        } else {
            write!(out, "{}", explained.text)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let set = policy::load(&args.policy)?;
    let explanation = eval::explain_named(&set, &cgroup, args.uid, to, &names, protocol, args.port);
    if args.json {
        let mut json = to_json(&set, &explanation);
        if !names.is_empty() {
            json["names"] = names.into();
        }
        writeln!(out, "{json}")?;
    } else {
        write_text(out, &set, &explanation)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--from`: how the policies judge a packet that starts a new inbound connection or flow.
fn run_ingress(
    args: &ExplainArgs,
    cgroup: &str,
    src: IpAddr,
    protocol: u8,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    if args.policy.is_empty() {
        bail!("--from needs --policy: the running agent explains outbound connections only");
    }
    let set = policy::load(&args.policy)?;
    let explanation = eval::explain_ingress(&set, cgroup, args.uid, src, protocol, args.port);
    match (&explanation, args.json) {
        (Some(e), true) => {
            let mut json = to_json(&set, e);
            json["direction"] = "ingress".into();
            writeln!(out, "{json}")?;
        }
        (Some(e), false) => write_text(out, &set, e)?,
        (None, true) => writeln!(
            out,
            "{}",
            serde_json::json!({"verdict": "allow", "direction": "ingress", "judged": false, "matched": []})
        )?,
        (None, false) => writeln!(
            out,
            "verdict: allow (no applicable policy restricts inbound traffic; not judged)"
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_protocol(text: &str) -> anyhow::Result<u8> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "tcp" => IPPROTO_TCP,
        "udp" => IPPROTO_UDP,
        "icmp" => IPPROTO_ICMP,
        "icmpv6" => IPPROTO_ICMPV6,
        other => other.parse().with_context(|| {
            format!("unknown protocol `{text}`: use tcp, udp, icmp, icmpv6 or a number")
        })?,
    })
}

fn verdict_name(v: u8) -> &'static str {
    match v {
        verdict::DENY => "deny",
        verdict::ALLOW => "allow",
        _ => "none",
    }
}

fn info(set: &PolicySet, id: u32) -> Option<RuleInfo> {
    (id != NO_RULE)
        .then(|| set.rule_table().into_iter().find(|r| r.id == id))
        .flatten()
}

/// `{"verdict", "policy"?, "rule"?, "audit_verdict"?, "matched": [{"policy", "rule", "action"}]}`
pub fn to_json(set: &PolicySet, e: &Explanation) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    object.insert("verdict".into(), verdict_name(e.decision.verdict).into());
    if let Some(rule) = info(set, e.decision.rule) {
        object.insert("policy".into(), rule.policy.into());
        object.insert("rule".into(), rule.rule.into());
    }
    if e.decision.audit_verdict != verdict::NONE {
        object.insert(
            "audit_verdict".into(),
            verdict_name(e.decision.audit_verdict).into(),
        );
    }
    let matched: Vec<serde_json::Value> = e
        .matched
        .iter()
        .map(|m| serde_json::json!({"policy": m.policy, "rule": m.rule, "action": m.action.as_str()}))
        .collect();
    object.insert("matched".into(), matched.into());
    if !e.hosts.is_empty() {
        let hosts: Vec<serde_json::Value> = e
            .hosts
            .iter()
            .map(|h| serde_json::json!({"name": h.name, "pattern": h.pattern, "policy": h.policy, "rule": h.rule}))
            .collect();
        object.insert("hosts".into(), hosts.into());
    }
    object.into()
}

/// The verdict as `egress explain` prints it without `--json`.
pub fn write_text(out: &mut dyn Write, set: &PolicySet, e: &Explanation) -> std::io::Result<()> {
    let d = e.decision;
    let named = |id| {
        info(set, id).map_or_else(
            || "no rule".to_string(),
            |r| format!("{}/{}", r.policy, r.rule),
        )
    };
    if e.applicable.is_empty() {
        writeln!(out, "verdict: allow (no policy applies to this workload)")?;
        return Ok(());
    }
    writeln!(
        out,
        "verdict: {} by {}",
        verdict_name(d.verdict),
        named(d.rule)
    )?;
    if d.audit_verdict != verdict::NONE {
        writeln!(
            out,
            "audit verdict: {} by {} (recorded, never dropped)",
            verdict_name(d.audit_verdict),
            named(d.audit_rule)
        )?;
    }
    writeln!(out, "logged: {}", if d.log == 1 { "yes" } else { "no" })?;
    writeln!(out, "applicable policies: {}", e.applicable.join(", "))?;
    for h in &e.hosts {
        writeln!(
            out,
            "name {} matches host `{}` of {}/{}",
            h.name, h.pattern, h.policy, h.rule
        )?;
    }
    if e.matched.is_empty() {
        writeln!(
            out,
            "no rule matched; the decision is the policies' default"
        )?;
    }
    for m in &e.matched {
        let decider = match m.mode {
            Mode::Enforce => d.rule,
            Mode::Audit => d.audit_rule,
        };
        let why = if m.id == decider {
            "decided".to_string()
        } else if m.action == Action::Allow
            && info(set, decider).is_some_and(|r| r.action == Action::Deny)
        {
            format!("lost: deny rules win over allow rules ({})", named(decider))
        } else {
            format!("lost: {} matched first (lower rule id)", named(decider))
        };
        let mode = if m.mode == Mode::Audit {
            " [audit]"
        } else {
            ""
        };
        writeln!(
            out,
            "  {}/{} {}{mode}: {why}",
            m.policy,
            m.rule,
            m.action.as_str()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn args(
        unit: Option<&str>,
        cgroup: Option<&str>,
        to: &str,
        port: u16,
        protocol: &str,
    ) -> ExplainArgs {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        ExplainArgs {
            policy: vec![dir],
            cgroup: cgroup.map(String::from),
            unit: unit.map(String::from),
            uid: 0,
            to: Some(to.parse().expect("valid test input")),
            from: None,
            host: Vec::new(),
            port,
            protocol: protocol.into(),
            json: true,
            socket: SocketArgs {
                socket: PathBuf::from(crate::control::DEFAULT_SOCKET),
            },
        }
    }

    fn json(a: &ExplainArgs) -> serde_json::Value {
        let mut out = Vec::new();
        run_to(a, &mut out).expect("valid test input");
        serde_json::from_slice(&out).expect("valid test input")
    }

    #[test]
    fn allowlisted_unit_is_denied_by_default() {
        let v = json(&args(Some("trainer.service"), None, "192.0.2.1", 80, "tcp"));
        assert_eq!(
            v,
            serde_json::json!({
                "verdict": "deny", "policy": "trainer-allowlist", "rule": "default", "matched": []
            })
        );
    }

    #[test]
    fn deny_wins_and_losers_are_listed() {
        let v = json(&args(
            Some("trainer.service"),
            None,
            "169.254.169.254",
            53,
            "udp",
        ));
        assert_eq!(v["verdict"], "deny");
        assert_eq!(v["rule"], "no-cloud-metadata");
        assert_eq!(v["matched"].as_array().map(Vec::len), Some(2), "{v}");
        let mut a = args(Some("trainer.service"), None, "169.254.169.254", 53, "udp");
        a.json = false;
        let mut out = Vec::new();
        run_to(&a, &mut out).expect("valid test input");
        let text = String::from_utf8(out).expect("valid test input");
        assert!(
            text.contains("trainer-allowlist/dns allow: lost: deny rules win"),
            "{text}"
        );
    }

    #[test]
    fn audit_verdict_is_reported() {
        let v = json(&args(
            None,
            Some("/system.slice/web.service"),
            "198.51.100.7",
            443,
            "tcp",
        ));
        assert_eq!(v["verdict"], "allow");
        assert_eq!(v["policy"], "default");
        assert_eq!(v["audit_verdict"], "deny");
        let v = json(&args(
            None,
            Some("/system.slice/web.service"),
            "192.0.2.9",
            8443,
            "tcp",
        ));
        assert_eq!(v["audit_verdict"], "allow");
    }

    #[test]
    fn inbound_connections_are_explained_with_from() {
        let mut a = args(None, Some("/system.slice/db.service"), "::1", 22, "tcp");
        (a.to, a.from) = (None, Some("192.0.2.10".parse().expect("valid test input")));
        let v = json(&a);
        assert_eq!(
            v,
            serde_json::json!({
                "verdict": "allow", "policy": "outbound-only", "rule": "ssh-from-mgmt",
                "direction": "ingress",
                "matched": [{"policy": "outbound-only", "rule": "ssh-from-mgmt", "action": "allow"}]
            })
        );
        a.port = 5432;
        let v = json(&a);
        assert_eq!(v["verdict"], "deny");
        assert_eq!(v["rule"], "inbound-default");
        a.json = false;
        let mut out = Vec::new();
        run_to(&a, &mut out).expect("valid test input");
        let text = String::from_utf8(out).expect("valid test input");
        assert!(
            text.starts_with("verdict: deny by outbound-only/inbound-default"),
            "{text}"
        );
    }

    #[test]
    fn inbound_without_restrictions_is_not_judged() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let mut a = args(None, None, "::1", 22, "tcp");
        (a.to, a.from) = (None, Some("192.0.2.10".parse().expect("valid test input")));
        a.policy = vec![dir.join("opt-out.yaml")];
        let v = json(&a);
        assert_eq!(v["judged"], false, "{v}");
        assert_eq!(v["verdict"], "allow", "{v}");
        a.policy = Vec::new();
        assert!(
            run_to(&a, &mut Vec::new()).is_err(),
            "--from needs --policy"
        );
    }

    #[test]
    fn names_are_matched_against_host_rules() {
        let mut a = args(Some("fetcher.service"), None, "192.0.2.1", 443, "tcp");
        a.host = vec!["API.Example.com.".into(), "edge.cdn.example.net".into()];
        let v = json(&a);
        assert_eq!(v["verdict"], "allow", "{v}");
        assert_eq!(v["rule"], "api", "{v}");
        assert_eq!(
            v["hosts"],
            serde_json::json!([
                {"name": "api.example.com", "pattern": "api.example.com", "policy": "fetcher-hostnames", "rule": "api"},
                {"name": "edge.cdn.example.net", "pattern": "*.cdn.example.net", "policy": "fetcher-hostnames", "rule": "api"}
            ]),
            "{v}"
        );
        assert_eq!(
            v["names"],
            serde_json::json!(["api.example.com", "edge.cdn.example.net"])
        );
        // A CNAME into a denied zone: deny wins across names.
        a.host.push("x.tracker.example.net".into());
        a.json = false;
        let mut out = Vec::new();
        run_to(&a, &mut out).expect("valid test input");
        let text = String::from_utf8(out).expect("valid test input");
        assert!(
            text.starts_with("verdict: deny by fetcher-hostnames/no-tracking")
                && text.contains(
                    "name x.tracker.example.net matches host `*.tracker.example.net` of fetcher-hostnames/no-tracking"
                ),
            "{text}"
        );
        a.host = vec!["cdn.example.net".into()];
        a.json = true;
        let v = json(&a);
        assert_eq!(
            v["rule"], "default",
            "a wildcard does not match its base: {v}"
        );
        assert!(v.get("hosts").is_none(), "{v}");
        a.port = 53;
        a.host = Vec::new();
        let v = json(&a);
        assert_eq!(v["rule"], "dns-other-resolvers", "{v}");
        a.host = vec!["a..b".into()];
        assert!(run_to(&a, &mut Vec::new()).is_err(), "not a name");
        a.host = vec!["api.example.com".into()];
        a.policy = Vec::new();
        assert!(
            run_to(&a, &mut Vec::new()).is_err(),
            "--host needs --policy"
        );
    }

    #[test]
    fn bad_protocol_is_an_error() {
        let mut out = Vec::new();
        assert!(run_to(&args(None, None, "::1", 1, "sctpx"), &mut out).is_err());
    }
}
