//! `egress check`: validate and compile policies offline.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::compile::{CgroupResolution, compile};
use crate::policy::{self, Diagnostic, LoadError};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Policy files, or directories of `*.yaml` / `*.yml` files.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    run_to(
        args,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

/// [`run`], writing the report to `out` and diagnostics to `err`.
pub fn run_to(
    args: &CheckArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let (set, errors) = match policy::load(&args.paths) {
        Ok(set) => (Some(set), Vec::new()),
        Err(LoadError::Invalid(diagnostics)) => (
            None,
            diagnostics.iter().map(|d| d.render("error")).collect(),
        ),
        Err(other) => (None, vec![format!("error: {other}")]),
    };
    // Offline there is no cgroup tree to find units in: units compile to nothing, which does
    // not change whether the policy is valid.
    let compiled = set
        .as_ref()
        .map(|set| compile(set, &CgroupResolution::default(), 0));
    let mut errors = errors;
    let compiled = match compiled {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            errors.push(format!("error: {e}"));
            None
        }
        None => None,
    };
    let warnings: &[Diagnostic] = set.as_ref().map_or(&[], |s| &s.warnings);
    if args.json {
        let diag = |d: &Diagnostic| {
            serde_json::json!({
                "file": d.file.display().to_string(),
                "line": d.location.map(|l| l.line),
                "column": d.location.map(|l| l.column),
                "message": d.message,
            })
        };
        let report = serde_json::json!({
            "ok": errors.is_empty(),
            "policies": set.as_ref().map_or(0, |s| s.policies.len()),
            "rules": set.as_ref().map_or(0, |s| s.rule_count()),
            "ingress_rules": set.as_ref().map_or(0, |s| s.ingress_rule_count()),
            "inbound_policies": set.as_ref().map_or(0, |s| s.inbound_policy_count()),
            "prefixes": set.as_ref().map_or(0, |s| s.prefix_count()),
            "map_entries": compiled.as_ref().map(|c| c.summary),
            "warnings": warnings.iter().map(diag).collect::<Vec<_>>(),
            "errors": errors,
        });
        writeln!(out, "{report}")?;
    } else {
        for e in &errors {
            writeln!(err, "{e}")?;
        }
        for w in warnings {
            writeln!(err, "{}", w.render("warning"))?;
        }
        if let (Some(set), Some(c)) = (&set, &compiled) {
            writeln!(
                out,
                "ok: {} policies, {} rules, {} prefixes ({} address entries, {} port entries), {} warnings",
                set.policies.len(),
                set.rule_count(),
                set.prefix_count(),
                c.summary.prefixes,
                c.summary.ports,
                warnings.len()
            )?;
            let inbound = set.inbound_policy_count();
            if inbound > 0 {
                writeln!(
                    out,
                    "inbound: {inbound} policies restrict new inbound connections, {} ingress rules, {} ingress scopes",
                    set.ingress_rule_count(),
                    c.summary.ingress_scopes,
                )?;
            }
        } else {
            writeln!(err, "{} errors", errors.len())?;
        }
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
    }

    fn check(paths: Vec<PathBuf>, json: bool) -> (ExitCode, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code =
            run_to(&CheckArgs { paths, json }, &mut out, &mut err).expect("valid test input");
        (
            code,
            String::from_utf8(out).expect("valid test input"),
            String::from_utf8(err).expect("valid test input"),
        )
    }

    #[test]
    fn every_example_passes() {
        for name in [
            "default.yaml",
            "opt-out.yaml",
            "allowlist.yaml",
            "audit-rollout.yaml",
            "outbound-only.yaml",
            "hostnames.yaml",
        ] {
            let (code, out, err) = check(vec![examples().join(name)], false);
            assert_eq!(code, ExitCode::SUCCESS, "{name}: {err}");
            assert!(out.starts_with("ok: 1 policies"), "{name}: {out}");
            assert!(err.is_empty(), "{name} has warnings: {err}");
        }
        let (code, out, _) = check(vec![examples()], true);
        assert_eq!(code, ExitCode::SUCCESS);
        let report: serde_json::Value = serde_json::from_str(&out).expect("valid test input");
        assert_eq!(report["policies"], 6);
        assert_eq!(report["ok"], true);
        assert_eq!(report["ingress_rules"], 1);
        assert_eq!(report["inbound_policies"], 1);
        assert_eq!(report["map_entries"]["ingress_scopes"], 1);
    }

    #[test]
    fn inbound_summary_counts_ingress_rules() {
        let (code, out, err) = check(vec![examples().join("outbound-only.yaml")], false);
        assert_eq!(code, ExitCode::SUCCESS, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(
            lines[0].starts_with("ok: 1 policies, 1 rules, 3 prefixes"),
            "{out}"
        );
        assert_eq!(
            lines[1],
            "inbound: 1 policies restrict new inbound connections, 1 ingress rules, 1 ingress scopes"
        );
        let (_, out, _) = check(vec![examples().join("opt-out.yaml")], false);
        assert_eq!(
            out.lines().count(),
            1,
            "no inbound line without inbound rules: {out}"
        );
    }

    #[test]
    fn errors_and_warnings_are_positioned() {
        let dir = tempfile::tempdir().expect("valid test input");
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: x}\nspec:\n  egres: []\n").expect("valid test input");
        let (code, _, err) = check(vec![bad.clone()], false);
        assert_eq!(code, ExitCode::FAILURE);
        let want = format!("{}:5:3: error: spec: unknown field `egres`", bad.display());
        assert!(err.starts_with(&want), "{err}");
        assert!(err.contains("did you mean `egress`?"), "{err}");

        let host = dir.path().join("host.yaml");
        std::fs::write(&host, "apiVersion: egress.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: x}\nspec:\n  defaultAction: deny\n  egress:\n    - name: t\n      action: allow\n      to:\n        - host: t.example.com\n").expect("valid test input");
        let (code, out, err) = check(vec![host.clone()], false);
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(out.contains("2 warnings"), "{out}");
        let want = format!(
            "{}:10:11: warning: host rules match only addresses learned from DNS answers, and policy `x` allows no DNS (port 53): workloads need DNS to learn names",
            host.display()
        );
        assert!(err.contains(&want), "{err}");
    }

    #[test]
    fn missing_files_fail() {
        let (code, _, err) = check(vec![PathBuf::from("/nonexistent/p.yaml")], false);
        assert_eq!(code, ExitCode::FAILURE);
        assert!(err.starts_with("error: /nonexistent/p.yaml"), "{err}");
    }
}
