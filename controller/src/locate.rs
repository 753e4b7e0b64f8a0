//! Where a field lies in a manifest: `spec.ports[1].port` → the line and column of that key in
//! the YAML (or JSON) text, so an error found after parsing (by conversion, which only sees
//! typed objects) names the line a person has to edit, not the document's first line.
//!
//! The document is read again with an event parser that keeps positions (`granit-parser`,
//! which `kube` already uses for kubeconfigs); serde_yaml's `Value` has none. Accepted paths:
//! keys joined by `.`, sequence indices as `[N]` (`spec.rules[0].http.paths[2].backend`), as
//! both conversion and `serde_path_to_error` write them. A key holding dots (an annotation such
//! as `switchboard.dev/lb-algorithm`) is matched whole.

use granit_parser::{Event, Marker, Parser, Span};

/// A 1-based line and column.
pub type Position = (usize, usize);

/// The node tree of one document, with where each key or item starts.
enum Node {
    Map(Vec<(String, Marker, Node)>),
    Seq(Vec<(Marker, Node)>),
    Leaf,
}

/// The position of `path` in the single YAML or JSON document `text`: of its key for a mapping
/// entry, of its item for a sequence element. A path that is not there in full (a required field
/// left out) gives the deepest part of it that is; `None` when the text does not parse or not
/// even the first key is there.
pub fn locate(text: &str, path: &str) -> Option<Position> {
    let mut events = Parser::new_from_str(text)
        .map_while(Result::ok)
        .filter(|(e, _)| is_structure(e));
    let root = loop {
        let (event, _) = events.next()?;
        if starts_node(&event) {
            break build(&mut events, event);
        }
    };
    find(&root, path, None).map(|m| (m.line(), m.col() + 1))
}

/// Events that make up the tree (comments and anchors are presentation only).
fn is_structure(e: &Event) -> bool {
    starts_node(e) || matches!(e, Event::MappingEnd | Event::SequenceEnd)
}

fn starts_node(e: &Event) -> bool {
    matches!(
        e,
        Event::Scalar(..)
            | Event::MappingStart(..)
            | Event::SequenceStart(..)
            | Event::Alias(..)
            | Event::UnresolvedAlias(..)
    )
}

/// The node that `first` starts, reading its children from `events`.
fn build<'a>(events: &mut impl Iterator<Item = (Event<'a>, Span)>, first: Event<'a>) -> Node {
    match first {
        Event::MappingStart(..) => {
            let mut entries = Vec::new();
            while let Some((key, key_span)) = events.next() {
                if matches!(key, Event::MappingEnd | Event::SequenceEnd) {
                    break;
                }
                let name = match &key {
                    Event::Scalar(s, ..) => s.to_string(),
                    _ => String::new(),
                };
                // A complex key (a mapping or sequence as key) is read and ignored.
                build(events, key);
                let Some((value, _)) = events.next() else {
                    break;
                };
                let value = build(events, value);
                entries.push((name, key_span.start, value));
            }
            Node::Map(entries)
        }
        Event::SequenceStart(..) => {
            let mut items = Vec::new();
            while let Some((item, span)) = events.next() {
                if matches!(item, Event::MappingEnd | Event::SequenceEnd) {
                    break;
                }
                items.push((span.start, build(events, item)));
            }
            Node::Seq(items)
        }
        _ => Node::Leaf,
    }
}

/// The start of `rest` below `node`, or `deepest` (where `node` itself starts) when the next
/// step of `rest` is not there.
fn find(node: &Node, rest: &str, deepest: Option<Marker>) -> Option<Marker> {
    if rest.is_empty() {
        return deepest;
    }
    match node {
        Node::Map(entries) => {
            for (key, at, value) in entries {
                let Some(after) = rest.strip_prefix(key.as_str()) else {
                    continue;
                };
                if after.is_empty() {
                    return Some(*at);
                }
                if let Some(after) = after.strip_prefix('.') {
                    return find(value, after, Some(*at));
                }
                if after.starts_with('[') {
                    return find(value, after, Some(*at));
                }
            }
            deepest
        }
        Node::Seq(items) => {
            let Some((index, after)) = rest
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .and_then(|(n, after)| Some((n.parse::<usize>().ok()?, after)))
            else {
                return deepest;
            };
            match items.get(index) {
                Some((at, item)) => find(item, after.trim_start_matches('.'), Some(*at)),
                None => deepest,
            }
        }
        Node::Leaf => deepest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  annotations:
    switchboard.dev/lb-algorithm: maglev
spec:
  # a comment
  clusterIP: 10.0.0.1
  ports:
  - name: http
    port: 80
  - {name: admin, port: 70000}
";

    #[test]
    fn paths_to_positions() {
        let cases = [
            ("kind", Some((2, 1))),
            ("spec.clusterIP", Some((9, 3))),
            ("spec.ports[0].port", Some((12, 5))),
            ("spec.ports[1]", Some((13, 5))),
            ("spec.ports[1].port", Some((13, 19))),
            (
                "metadata.annotations.switchboard.dev/lb-algorithm",
                Some((6, 5)),
            ),
            // Not there in full: the deepest part that is.
            ("spec.ports[5].port", Some((10, 3))),
            ("metadata.namespace", Some((3, 1))),
            ("status.loadBalancer", None),
        ];
        for (path, want) in cases {
            assert_eq!(locate(SERVICE, path), want, "{path}");
        }
    }

    #[test]
    fn json_too() {
        let json = "{\"apiVersion\": \"v1\",\n \"kind\": \"Service\",\n \"spec\": {\"ports\": [\n  {\"port\": 0}]}}";
        assert_eq!(locate(json, "spec.ports[0].port"), Some((4, 4)));
    }
}
