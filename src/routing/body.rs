//! Rewriting a JSON request body by patching its bytes: the caller's body goes to Azure as the
//! caller wrote it (key order, spacing, escapes such as `\u00e9`, number spellings), with only
//! the top-level `model` value replaced and, for a stream whose usage the filter needs,
//! `stream_options.include_usage` set. Re-serializing instead would hand Azure a different
//! document than the one the caller signed off on, and cost a whole-document parse and
//! write per attempt.
//!
//! The scanner reads only the top-level object's keys (decoding escaped keys, so
//! `"mod\u0065l"` is `model` as Azure's parser sees it) and skips every value without
//! recursion; a body that is not one JSON object, or that names `model` twice, is refused
//! (the same body [`super::read_body`] refuses).

use crate::errors::FilterError;

fn invalid() -> FilterError {
    FilterError::bad_request("invalid_json", "request body is not a JSON object")
}

/// Byte ranges of one object's members: (decoded key, value start, value end).
struct Members {
    /// Position just after the opening `{`.
    open: usize,
    /// The object has no member.
    empty: bool,
    members: Vec<(String, usize, usize)>,
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), FilterError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(invalid())
        }
    }

    /// A string, from its opening quote; returns whether it had escapes.
    fn string(&mut self) -> Result<bool, FilterError> {
        self.expect(b'"')?;
        let mut escaped = false;
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 2;
                }
                Some(c) if c < 0x20 => return Err(invalid()),
                Some(_) => self.i += 1,
                None => return Err(invalid()),
            }
        }
    }

    /// Any value, without recursion: strings are skipped whole, brackets counted.
    fn value(&mut self) -> Result<(), FilterError> {
        let mut depth: usize = 0;
        loop {
            self.ws();
            match self.peek() {
                Some(b'"') => {
                    self.string()?;
                }
                Some(b'{' | b'[') => {
                    depth += 1;
                    self.i += 1;
                    continue;
                }
                Some(b'}' | b']') if depth > 0 => {
                    depth -= 1;
                    self.i += 1;
                }
                Some(b',' | b':') if depth > 0 => {
                    self.i += 1;
                    continue;
                }
                Some(c) if c == b'-' || c.is_ascii_alphanumeric() => {
                    while self
                        .peek()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c))
                    {
                        self.i += 1;
                    }
                }
                _ => return Err(invalid()),
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }

    /// The members of the object that starts here.
    fn object(&mut self) -> Result<Members, FilterError> {
        self.ws();
        self.expect(b'{')?;
        let open = self.i;
        let mut members = Vec::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Members {
                open,
                empty: true,
                members,
            });
        }
        loop {
            self.ws();
            let key_start = self.i;
            let escaped = self.string()?;
            let raw = self.b.get(key_start..self.i).ok_or_else(invalid)?;
            let key = if escaped {
                serde_json::from_slice::<String>(raw).map_err(|_| invalid())?
            } else {
                let inner = raw.get(1..raw.len().saturating_sub(1)).unwrap_or_default();
                String::from_utf8_lossy(inner).into_owned()
            };
            self.ws();
            self.expect(b':')?;
            self.ws();
            let start = self.i;
            self.value()?;
            members.push((key, start, self.i));
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Members {
                        open,
                        empty: false,
                        members,
                    });
                }
                _ => return Err(invalid()),
            }
        }
    }
}

impl Members {
    /// The value range of `key`; a key given twice is refused.
    fn get(&self, key: &str) -> Result<Option<(usize, usize)>, FilterError> {
        let mut found = None;
        for (k, s, e) in &self.members {
            if k == key {
                if found.is_some() {
                    return Err(invalid());
                }
                found = Some((*s, *e));
            }
        }
        Ok(found)
    }

    /// An edit inserting members (`"key":value` each) before the object's first.
    fn insert_first(&self, members: &[String]) -> Edit {
        let comma = if self.empty { "" } else { "," };
        Edit {
            at: self.open,
            remove: 0,
            insert: format!("{}{comma}", members.join(",")),
        }
    }
}

/// Replace `remove` bytes at `at` by `insert`.
struct Edit {
    at: usize,
    remove: usize,
    insert: String,
}

fn apply(body: &[u8], mut edits: Vec<Edit>) -> Vec<u8> {
    edits.sort_by_key(|e| e.at);
    let extra: usize = edits.iter().map(|e| e.insert.len()).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut pos = 0;
    for e in edits {
        out.extend_from_slice(body.get(pos..e.at).unwrap_or_default());
        out.extend_from_slice(e.insert.as_bytes());
        pos = e.at + e.remove;
    }
    out.extend_from_slice(body.get(pos..).unwrap_or_default());
    out
}

/// The top-level object of a whole body (nothing but whitespace after it).
fn top_level(body: &[u8]) -> Result<Members, FilterError> {
    let mut s = Scanner { b: body, i: 0 };
    let members = s.object()?;
    s.ws();
    if s.i != body.len() {
        return Err(invalid());
    }
    Ok(members)
}

/// Sets `model` and/or turns on `stream_options.include_usage`, changing nothing else;
/// `Ok(None)` when the body already says so.
pub fn rewrite_body(
    body: &[u8],
    set_model: Option<&str>,
    include_usage: bool,
) -> Result<Option<Vec<u8>>, FilterError> {
    if set_model.is_none() && !include_usage {
        // The common case (Azure OpenAI, no streaming): no scan at all.
        return Ok(None);
    }
    // Azure's parser refuses what is not UTF-8; so does the filter when it rewrites.
    std::str::from_utf8(body).map_err(|_| invalid())?;
    let top = top_level(body)?;
    let mut edits = Vec::new();
    let mut new_members = Vec::new();
    if let Some(model) = set_model {
        let value = serde_json::to_string(model).map_err(|_| invalid())?;
        match top.get("model")? {
            Some((s, e)) => {
                if body.get(s..e) != Some(value.as_bytes()) {
                    let same = serde_json::from_slice::<String>(body.get(s..e).unwrap_or_default())
                        .is_ok_and(|m| m == model);
                    if !same {
                        edits.push(Edit {
                            at: s,
                            remove: e - s,
                            insert: value,
                        });
                    }
                }
            }
            None => new_members.push(format!("\"model\":{value}")),
        }
    }
    if include_usage {
        match top.get("stream_options")? {
            Some((s, _)) if body.get(s) == Some(&b'{') => {
                let mut scan = Scanner { b: body, i: s };
                let options = scan.object()?;
                match options.get("include_usage")? {
                    Some((vs, ve)) if body.get(vs..ve) == Some(b"true") => {}
                    Some((vs, ve)) => edits.push(Edit {
                        at: vs,
                        remove: ve - vs,
                        insert: "true".into(),
                    }),
                    None => edits.push(options.insert_first(&["\"include_usage\":true".into()])),
                }
            }
            Some((s, e)) => edits.push(Edit {
                at: s,
                remove: e - s,
                insert: r#"{"include_usage":true}"#.into(),
            }),
            None => new_members.push(r#""stream_options":{"include_usage":true}"#.into()),
        }
    }
    if !new_members.is_empty() {
        edits.push(top.insert_first(&new_members));
    }
    if edits.is_empty() {
        return Ok(None);
    }
    Ok(Some(apply(body, edits)))
}

/// Sets the body's top-level `model` (a pool attempt's deployment), changing no other byte.
pub fn set_body_model(body: &[u8], model: &str) -> Result<Option<Vec<u8>>, FilterError> {
    rewrite_body(body, Some(model), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn patched(body: &str, model: Option<&str>, usage: bool) -> String {
        String::from_utf8(
            rewrite_body(body.as_bytes(), model, usage)
                .unwrap()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn only_the_model_value_changes() {
        let body = r#"{ "messages" : [{"role":"user","content":"h\u00e9llo \"model\": x","model":"inner"}],
  "model":"gpt-4o" , "temperature": 1.0e0, "z": null }"#;
        let out = patched(body, Some("gpt-4o-global"), false);
        assert_eq!(
            out,
            body.replace(r#""model":"gpt-4o""#, r#""model":"gpt-4o-global""#)
        );
        assert!(out.contains(r#"h\u00e9llo"#) && out.contains("1.0e0"));
        assert_eq!(set_body_model(body.as_bytes(), "gpt-4o").unwrap(), None);
        // The same value written with escapes is the same model: nothing to change.
        assert_eq!(
            set_body_model(br#"{"model":"gpt\u002d4o"}"#, "gpt-4o").unwrap(),
            None
        );
    }

    #[test]
    fn escaped_keys_missing_and_odd_models() {
        assert_eq!(
            patched(r#"{"mod\u0065l":"a","x":1}"#, Some("b"), false),
            r#"{"mod\u0065l":"b","x":1}"#
        );
        assert_eq!(
            patched(r#"{"x":1}"#, Some("b"), false),
            r#"{"model":"b","x":1}"#
        );
        assert_eq!(patched(r#"{ }"#, Some("b"), false), r#"{"model":"b" }"#);
        assert_eq!(
            patched(r#"{}"#, Some("b"), true),
            r#"{"model":"b","stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            patched(r#"{"model":null}"#, Some("b"), false),
            r#"{"model":"b"}"#
        );
        assert_eq!(
            patched(r#"{"model":{"a":[1,{"b":"}"}]}}"#, Some("b\"c"), false),
            r#"{"model":"b\"c"}"#
        );
    }

    #[test]
    fn include_usage_is_added_where_it_belongs() {
        let cases = [
            (
                r#"{"stream":true}"#,
                r#"{"stream_options":{"include_usage":true},"stream":true}"#,
            ),
            (
                r#"{"stream":true,"stream_options":{}}"#,
                r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            ),
            (
                r#"{"stream_options":{"x":1},"stream":true}"#,
                r#"{"stream_options":{"include_usage":true,"x":1},"stream":true}"#,
            ),
            (
                r#"{"stream_options":{"include_usage":false}}"#,
                r#"{"stream_options":{"include_usage":true}}"#,
            ),
            (
                r#"{"stream_options":null}"#,
                r#"{"stream_options":{"include_usage":true}}"#,
            ),
        ];
        for (body, want) in cases {
            assert_eq!(patched(body, None, true), want, "{body}");
        }
        assert_eq!(
            rewrite_body(br#"{"stream_options":{"include_usage":true}}"#, None, true).unwrap(),
            None
        );
        let both = patched(r#"{"model":"a","stream":true}"#, Some("b"), true);
        let v: Value = serde_json::from_str(&both).unwrap();
        assert_eq!(
            v,
            json!({"model": "b", "stream": true, "stream_options": {"include_usage": true}})
        );
    }

    #[test]
    fn what_is_not_one_object_is_refused() {
        for bad in [
            &b""[..],
            b"[]",
            b"{\"model\":\"a\"} x",
            b"{\"model\":\"a\",\"model\":\"b\"}",
            b"{\"model\":\"a\",\"mod\\u0065l\":\"b\"}",
            b"{\"model\" \"a\"}",
            b"{\"a\":1,}",
            b"{\"a\":\"\x01\"}",
            b"{\"a\":[1,2}",
            b"{\"a\":\"unterminated}",
            b"{\"a\":\\}",
        ] {
            assert!(
                rewrite_body(bad, Some("m"), false).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Deep nesting costs no stack.
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(rewrite_body(deep.as_bytes(), Some("m"), false)
            .unwrap()
            .is_some());
    }
}
