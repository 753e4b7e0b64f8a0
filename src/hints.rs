//! "Did you mean" hints that clap and serde do not give on their own: a `run` flag given to
//! another subcommand or before any (`switchboard --manifests DIR`), and a mistyped key in the
//! `--config` file. A mistyped flag or subcommand is clap's job (its `suggestions` feature:
//! "tip: a similar argument exists"); these cover the cases it has no candidate for.

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// How alike two names must be to be suggested: clap's own threshold (Jaro similarity).
const SIMILAR: f64 = 0.7;

/// The most similar of `candidates` to `word`, if any is similar enough.
pub fn most_similar<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro(word, c), c))
        .filter(|(score, _)| *score > SIMILAR)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Adds a tip to clap's "unexpected argument" error when the argument is a flag of `run` but was
/// given elsewhere: `switchboard --manifests DIR` (no subcommand) or `switchboard demo --dns X`.
/// `cli` is the whole command, `args` the command line (program name first).
pub fn misplaced_run_flag(cli: &clap::Command, err: &mut clap::Error, args: &[OsString]) {
    if err.kind() != ErrorKind::UnknownArgument {
        return;
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return;
    };
    let Some(long) = arg.strip_prefix("--") else {
        return;
    };
    let long = long.split_once('=').map_or(long, |(name, _)| name);
    let subcommand = args
        .iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .find(|a| !a.starts_with('-'));
    if subcommand == Some("run") {
        return;
    }
    let Some(run) = cli.find_subcommand("run") else {
        return;
    };
    if !run.get_arguments().any(|a| a.get_long() == Some(long)) {
        return;
    }
    let tip = format!("--{long} is a flag of `switchboard run`: switchboard run --{long} ...");
    err.insert(
        ContextKind::Suggested,
        ContextValue::StyledStrs(vec![tip.into()]),
    );
}

/// Rewrites serde's "unknown field `clustr-domain`, expected one of `manifests`, ..." to name
/// the likely key instead of listing all of them; other messages pass unchanged.
pub fn unknown_key(message: &str) -> String {
    let Some(rest) = message.split("unknown field `").nth(1) else {
        return message.to_string();
    };
    let Some((key, rest)) = rest.split_once('`') else {
        return message.to_string();
    };
    let Some(list) = rest.split("expected one of ").nth(1) else {
        return message.to_string();
    };
    let known = list.split(", ").map(|k| k.trim().trim_matches('`'));
    match most_similar(key, known) {
        Some(similar) => {
            let at = message.find("unknown field `").unwrap_or(0);
            format!(
                "{}unknown key `{key}`; did you mean `{similar}`?",
                &message[..at]
            )
        }
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similar_names() {
        let keys = ["cluster-domain", "cluster-cidr", "dns", "manifests"];
        assert_eq!(most_similar("clustr-domain", keys), Some("cluster-domain"));
        assert_eq!(most_similar("manifest", keys), Some("manifests"));
        assert_eq!(most_similar("zzz", keys), None);
    }

    #[test]
    fn unknown_key_names_the_likely_one() {
        let m = "TOML parse error at line 2, column 1\n  |\n2 | clustr-domain = 1\n  | ^^^^^^^^^^^^^\nunknown field `clustr-domain`, expected one of `dns`, `cluster-domain`, `ttl`\n";
        let out = unknown_key(m);
        assert!(out.starts_with("TOML parse error at line 2"), "{out}");
        assert!(
            out.ends_with("unknown key `clustr-domain`; did you mean `cluster-domain`?"),
            "{out}"
        );
        let far = m.replace("clustr-domain", "qqq");
        assert_eq!(unknown_key(&far), far);
    }
}
