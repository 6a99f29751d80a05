//! The `model` field of a multipart/form-data body (audio transcriptions and translations),
//! read strictly per RFC 2046 section 5.1.1 and RFC 7578, so that the model the filter routes,
//! limits and meters is exactly the one Azure reads.
//!
//! Parsers disagree on sloppy bodies (a `--boundary` not at a line start, LF-only line ends,
//! folded headers, backslashes in quoted parameters, `name*=`, two `model` fields, a field
//! named `Model`), and a caller who knows how the filter and Azure each resolve such a body
//! could route one model while Azure reads another. So anything a reasonable parser could
//! read differently is refused with a 400 instead of guessed at:
//! - the delimiter is `--boundary` at the start of the body or right after CRLF, followed by
//!   optional transport padding (spaces, tabs) and CRLF, or by `--` for the close delimiter;
//!   any other occurrence of `--boundary` (in a preamble, a part, the epilogue) is refused;
//! - a body without its close delimiter is refused;
//! - part headers end at the first empty line; every header line ends with CRLF, has a name
//!   and a colon, and is not folded; every part has exactly one `Content-Disposition:
//!   form-data` with exactly one `name` (a token or a quoted string without backslashes);
//! - a field whose name is `model` in any letter case is the model field: there may be one,
//!   named exactly `model`, without `filename` or `Content-Transfer-Encoding`, of type
//!   text/plain (or none), whose value is UTF-8 without control characters or surrounding
//!   whitespace.
//!
//! Clients (OpenAI and Azure SDKs through httpx, requests, curl, browsers) produce exactly
//! this shape with boundaries they chose not to occur in the content.

use crate::errors::FilterError;

/// Why a multipart body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    /// The content type is not `multipart/form-data`.
    NotFormData,
    /// No usable `boundary` parameter (missing, repeated, empty, longer than 70, bad chars).
    BadBoundary,
    /// No delimiter at the start of the body or after CRLF.
    NoDelimiter,
    /// `--boundary` where it is not a delimiter, or a delimiter line with trailing garbage.
    StrayBoundary,
    /// The close delimiter is missing.
    Unterminated,
    /// Part headers that are not CRLF-terminated `name: value` lines, or folded.
    BadPartHeaders,
    /// A part without exactly one `Content-Disposition: form-data` with exactly one `name`.
    BadDisposition,
    /// More than one field named `model` (in any letter case).
    DuplicateModel,
    /// A field named like `model` that is not a plain text field named exactly `model`.
    BadModelField,
}

impl FormError {
    fn message(self) -> &'static str {
        match self {
            FormError::NotFormData => "this API takes a multipart/form-data body",
            FormError::BadBoundary => {
                "the content type needs one boundary parameter of 1 to 70 characters (RFC 2046)"
            }
            FormError::NoDelimiter => {
                "the body does not start with its boundary delimiter (RFC 2046)"
            }
            FormError::StrayBoundary => {
                "the boundary occurs in the body where it is not a delimiter line"
            }
            FormError::Unterminated => "the body lacks its closing boundary delimiter",
            FormError::BadPartHeaders => {
                "a part's headers are not CRLF-terminated `name: value` lines"
            }
            FormError::BadDisposition => {
                "every part needs one `Content-Disposition: form-data` with one `name` (RFC 7578)"
            }
            FormError::DuplicateModel => "the form has more than one `model` field",
            FormError::BadModelField => {
                "the `model` field must be one plain text field named exactly `model`, without surrounding whitespace"
            }
        }
    }

    pub fn to_filter_error(self) -> FilterError {
        FilterError::bad_request("invalid_multipart_body", self.message())
    }
}

/// Longest boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;

/// The `model` field of a multipart/form-data body: `Ok(None)` when the form has none.
pub fn model_field(content_type: &str, body: &[u8]) -> Result<Option<String>, FormError> {
    let boundary = boundary(content_type)?;
    let mut dash = Vec::with_capacity(boundary.len() + 2);
    dash.extend_from_slice(b"--");
    dash.extend_from_slice(boundary.as_bytes());
    let mut model = None;
    for part in parts(body, &dash)? {
        if let Some(value) = model_of_part(part)? {
            if model.is_some() {
                return Err(FormError::DuplicateModel);
            }
            model = Some(value);
        }
    }
    Ok(model)
}

/// The boundary parameter of a `multipart/form-data` content type.
fn boundary(content_type: &str) -> Result<String, FormError> {
    let (media, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !media.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(FormError::NotFormData);
    }
    let params = parameters(params).ok_or(FormError::BadBoundary)?;
    let mut found = params
        .into_iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("boundary"));
    let (Some((_, value)), None) = (found.next(), found.next()) else {
        return Err(FormError::BadBoundary);
    };
    let valid_chars = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b));
    if value.is_empty() || value.len() > MAX_BOUNDARY || !valid_chars || value.ends_with(' ') {
        return Err(FormError::BadBoundary);
    }
    Ok(value)
}

/// `; key=value` parameters (value a token or a quoted string). None if malformed, if a
/// quoted string holds a backslash (parsers disagree on escapes) or a key repeats.
fn parameters(text: &str) -> Option<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(is_token_char) {
            return None;
        }
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            let value = quoted.get(..end)?;
            if value.contains('\\') || value.chars().any(char::is_control) {
                return None;
            }
            (value, quoted.get(end + 1..)?)
        } else {
            let end = after.find(';').unwrap_or(after.len());
            let value = after.get(..end)?.trim_end();
            if value.is_empty() || !value.bytes().all(is_token_char) {
                return None;
            }
            (value, after.get(end..)?)
        };
        if out.iter().any(|(k, _)| k.eq_ignore_ascii_case(key)) {
            return None;
        }
        out.push((key.to_string(), value.to_string()));
        let tail = tail.trim_start();
        rest = match tail.strip_prefix(';') {
            Some(next) => next.trim_start(),
            None if tail.is_empty() => "",
            None => return None,
        };
    }
    Some(out)
}

/// RFC 7230 tchar.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let tail = haystack.get(from..)?;
    if needle.is_empty() || tail.len() < needle.len() {
        return None;
    }
    tail.windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// The parts between the delimiters (each: headers, empty line, content). Every occurrence of
/// `dash` (`--boundary`) must be a delimiter line.
fn parts<'b>(body: &'b [u8], dash: &[u8]) -> Result<Vec<&'b [u8]>, FormError> {
    let mut out = Vec::new();
    let mut at = find(body, dash, 0).ok_or(FormError::NoDelimiter)?;
    if at != 0 && !at_line_start(body, at) {
        // The preamble (ignored) must end with CRLF before the first delimiter.
        return Err(FormError::StrayBoundary);
    }
    loop {
        let after = at + dash.len();
        let line_rest = body.get(after..).unwrap_or_default();
        if line_rest.starts_with(b"--") {
            // The close delimiter: the epilogue must not hold the boundary again.
            return match find(body, dash, after + 2) {
                Some(_) => Err(FormError::StrayBoundary),
                None => Ok(out),
            };
        }
        let padding = line_rest
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        if !line_rest
            .get(padding..)
            .is_some_and(|r| r.starts_with(b"\r\n"))
        {
            return Err(FormError::StrayBoundary);
        }
        let start = after + padding + 2;
        let Some(next) = find(body, dash, start) else {
            return Err(FormError::Unterminated);
        };
        if !at_line_start(body, next) || next < start + 2 {
            return Err(FormError::StrayBoundary);
        }
        // The CRLF before a delimiter belongs to the delimiter.
        out.push(body.get(start..next - 2).unwrap_or_default());
        at = next;
    }
}

fn at_line_start(body: &[u8], at: usize) -> bool {
    at >= 2 && body.get(at - 2..at) == Some(b"\r\n")
}

/// One part, its headers checked.
struct Part<'b> {
    name: String,
    filename: bool,
    content_type: Option<String>,
    transfer_encoding: bool,
    content: &'b [u8],
}

impl Part<'_> {
    /// A plain text field: no file name, no transfer encoding, text/plain (or no type).
    fn is_plain_text(&self) -> bool {
        let plain = self.content_type.as_deref().is_none_or(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/plain"))
        });
        plain && !self.filename && !self.transfer_encoding
    }
}

fn read_part(part: &[u8]) -> Result<Part<'_>, FormError> {
    let (head, content) = if let Some(content) = part.strip_prefix(b"\r\n") {
        (&part[..0], content)
    } else {
        let end = find(part, b"\r\n\r\n", 0).ok_or(FormError::BadPartHeaders)?;
        (
            part.get(..end).unwrap_or_default(),
            part.get(end + 4..).unwrap_or_default(),
        )
    };
    let head = String::from_utf8_lossy(head);
    let mut disposition = None;
    let mut content_type = None;
    let mut transfer_encoding = false;
    for line in head.split("\r\n").filter(|_| !head.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(FormError::BadPartHeaders)?;
        if name.is_empty() || !name.bytes().all(is_token_char) || line.contains(['\r', '\n']) {
            // Also refuses folded lines (they start with a space or tab).
            return Err(FormError::BadPartHeaders);
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-disposition") {
            if disposition.replace(value).is_some() {
                return Err(FormError::BadDisposition);
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("content-transfer-encoding") {
            transfer_encoding = true;
        }
    }
    let disposition = disposition.ok_or(FormError::BadDisposition)?;
    let (kind, params) = disposition.split_once(';').unwrap_or((disposition, ""));
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Err(FormError::BadDisposition);
    }
    let params = parameters(params).ok_or(FormError::BadDisposition)?;
    if params.iter().any(|(k, _)| k.ends_with('*')) {
        // RFC 7578 4.2: no RFC 2231 encoding of names; some parsers would still decode it.
        return Err(FormError::BadDisposition);
    }
    let param = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    };
    let name = param("name").ok_or(FormError::BadDisposition)?.to_string();
    Ok(Part {
        name,
        filename: param("filename").is_some(),
        content_type,
        transfer_encoding,
        content,
    })
}

/// The value of a part if it is the model field, after checking its headers.
fn model_of_part(part: &[u8]) -> Result<Option<String>, FormError> {
    let part = read_part(part)?;
    if !part.name.eq_ignore_ascii_case("model") {
        return Ok(None);
    }
    if part.name != "model" || !part.is_plain_text() {
        return Err(FormError::BadModelField);
    }
    let value = std::str::from_utf8(part.content).map_err(|_| FormError::BadModelField)?;
    if value.is_empty() || value.trim() != value || value.chars().any(char::is_control) {
        return Err(FormError::BadModelField);
    }
    Ok(Some(value.to_string()))
}

/// A text field of a form, for the guardrails (the `prompt` of transcriptions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextField {
    /// Where its value is in the body.
    pub range: std::ops::Range<usize>,
    /// Its value; `None` when it is not plain UTF-8 text (a file, a transfer encoding, another
    /// content type), so its text cannot be read as the service would.
    pub text: Option<String>,
}

/// The fields named `name` in any letter case (a parser may read `Prompt` as `prompt`), in
/// body order, read as strictly as the model field.
pub fn text_fields(
    content_type: &str,
    body: &[u8],
    name: &str,
) -> Result<Vec<TextField>, FormError> {
    let boundary = boundary(content_type)?;
    let mut dash = Vec::with_capacity(boundary.len() + 2);
    dash.extend_from_slice(b"--");
    dash.extend_from_slice(boundary.as_bytes());
    let mut out = Vec::new();
    for raw in parts(body, &dash)? {
        let part = read_part(raw)?;
        if !part.name.eq_ignore_ascii_case(name) {
            continue;
        }
        // The content is a subslice of the body: its offset.
        let start = (part.content.as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
        let text = if part.is_plain_text() && part.name == name {
            std::str::from_utf8(part.content).ok().map(str::to_string)
        } else {
            None
        };
        out.push(TextField {
            range: start..start + part.content.len(),
            text,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=XyZ";

    fn form(parts: &[&str]) -> Vec<u8> {
        let mut b = String::new();
        for p in parts {
            b.push_str("--XyZ\r\n");
            b.push_str(p);
            b.push_str("\r\n");
        }
        b.push_str("--XyZ--\r\n");
        b.into_bytes()
    }

    const FILE: &str = "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF....";
    const MODEL: &str = "Content-Disposition: form-data; name=\"model\"\r\n\r\nwhisper";

    #[test]
    fn reads_the_model_field_as_clients_send_it() {
        assert_eq!(
            model_field(CT, &form(&[FILE, MODEL])),
            Ok(Some("whisper".into()))
        );
        // Token name, quoted boundary, other letter case in header names and parameters,
        // transport padding after a delimiter, a preamble and an epilogue.
        let body = b"preamble\r\n--a'b(c)\r\ncontent-disposition: Form-Data; NAME=model\r\n\r\ngpt-4o-transcribe\r\n--a'b(c) \t\r\nContent-Disposition: form-data; name=language\r\n\r\nen\r\n--a'b(c)--\r\nepilogue";
        assert_eq!(
            model_field(
                "Multipart/Form-Data; charset=utf-8; boundary=\"a'b(c)\"",
                body
            ),
            Ok(Some("gpt-4o-transcribe".into()))
        );
        assert_eq!(model_field(CT, &form(&[FILE])), Ok(None));
        // Text near the boundary that is not `--XyZ` is content.
        assert_eq!(
            model_field(
                CT,
                &form(&[
                    FILE,
                    "Content-Disposition: form-data; name=\"prompt\"\r\n\r\nsay \"x\" -- XyZ"
                ])
            ),
            Ok(None)
        );
    }

    #[test]
    fn a_boundary_inside_a_part_is_refused() {
        // The escape of issue 14: a file part carrying `--XyZ` + a fake model part.
        let smuggled = "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nsecret-model";
        assert_eq!(
            model_field(CT, &form(&[smuggled, MODEL])),
            Err(FormError::StrayBoundary)
        );
        // LF-only delimiter lines, as lenient parsers accept them.
        let lf = "Content-Disposition: form-data; name=\"file\"\r\n\r\nx\n--XyZ\nContent-Disposition: form-data; name=\"model\"\n\nsecret";
        assert_eq!(
            model_field(CT, &form(&[lf, MODEL])),
            Err(FormError::StrayBoundary)
        );
        // A delimiter line with trailing garbage.
        assert_eq!(
            model_field(CT, b"--XyZ\r\nContent-Disposition: form-data; name=model\r\n\r\nm\r\n--XyZjunk\r\n\r\n--XyZ--"),
            Err(FormError::StrayBoundary)
        );
        // In the preamble, not at a line start; in the epilogue.
        assert_eq!(
            model_field(CT, b"x--XyZ\r\n\r\n--XyZ--"),
            Err(FormError::StrayBoundary)
        );
        let mut epilogue = form(&[MODEL]);
        epilogue.extend_from_slice(
            b"--XyZ\r\nContent-Disposition: form-data; name=model\r\n\r\nother\r\n--XyZ--",
        );
        assert_eq!(model_field(CT, &epilogue), Err(FormError::StrayBoundary));
    }

    #[test]
    fn two_model_fields_or_look_alikes_are_refused() {
        let token = "Content-Disposition: form-data; name=model\r\n\r\nother";
        assert_eq!(
            model_field(CT, &form(&[MODEL, token])),
            Err(FormError::DuplicateModel)
        );
        let upper = "Content-Disposition: form-data; name=\"Model\"\r\n\r\nother";
        assert_eq!(
            model_field(CT, &form(&[upper])),
            Err(FormError::BadModelField)
        );
        let file =
            "Content-Disposition: form-data; name=\"model\"; filename=\"m.txt\"\r\n\r\nother";
        assert_eq!(
            model_field(CT, &form(&[file])),
            Err(FormError::BadModelField)
        );
        let spaced = "Content-Disposition: form-data; name=\"model\"\r\n\r\n whisper";
        assert_eq!(
            model_field(CT, &form(&[spaced])),
            Err(FormError::BadModelField)
        );
        let b64 = "Content-Disposition: form-data; name=\"model\"\r\nContent-Transfer-Encoding: base64\r\n\r\nd2hpc3Blcg==";
        assert_eq!(
            model_field(CT, &form(&[b64])),
            Err(FormError::BadModelField)
        );
    }

    #[test]
    fn text_fields_and_where_they_are() {
        let prompt = "Content-Disposition: form-data; name=\"prompt\"\r\n\r\nsay hi";
        let body = form(&[MODEL, prompt]);
        let fields = text_fields(CT, &body, "prompt").unwrap();
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].text.as_deref(), Some("say hi"));
        assert_eq!(&body[fields[0].range.clone()], b"say hi");
        let upper = "Content-Disposition: form-data; name=\"Prompt\"\r\n\r\nx";
        let b64 = "Content-Disposition: form-data; name=prompt\r\nContent-Transfer-Encoding: base64\r\n\r\neA==";
        let file = "Content-Disposition: form-data; name=prompt; filename=p.txt\r\n\r\nx";
        for part in [upper, b64, file] {
            let fields = text_fields(CT, &form(&[MODEL, part]), "prompt").unwrap();
            assert_eq!(fields.len(), 1, "{part}");
            assert_eq!(fields[0].text, None, "{part}");
        }
        assert!(text_fields(CT, &form(&[MODEL]), "prompt")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn headers_and_parameters_parsers_disagree_on_are_refused() {
        let cases = [
            // Backslash escapes: is the name `model` or is `name=model` inside the filename?
            ("Content-Disposition: form-data; name=\"file\"; filename=\"x\\\"; name=\\\"model\"\r\n\r\nm", FormError::BadDisposition),
            ("Content-Disposition: form-data; name=\"file\"; name=\"model\"\r\n\r\nm", FormError::BadDisposition),
            ("Content-Disposition: form-data; name*=utf-8''model\r\n\r\nm", FormError::BadDisposition),
            ("Content-Disposition: form-data; name=\"a\"\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm", FormError::BadDisposition),
            ("Content-Disposition: form-data;\r\n name=\"model\"\r\n\r\nm", FormError::BadPartHeaders),
            ("Content-Disposition: form-data; name=\"model\"\n\nm", FormError::BadPartHeaders),
            ("Content-Type: text/plain\r\n\r\nm", FormError::BadDisposition),
            ("Content-Disposition: attachment; name=\"model\"\r\n\r\nm", FormError::BadDisposition),
        ];
        for (part, want) in cases {
            assert_eq!(model_field(CT, &form(&[part])), Err(want), "{part:?}");
        }
    }

    #[test]
    fn bodies_and_content_types_that_are_not_forms() {
        assert_eq!(
            model_field("application/json", b"{}"),
            Err(FormError::NotFormData)
        );
        for ct in [
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=a; boundary=b",
            "multipart/form-data; boundary=\"a b \"",
            "multipart/form-data; boundary=a<b",
        ] {
            assert_eq!(
                model_field(ct, b"--a\r\n"),
                Err(FormError::BadBoundary),
                "{ct}"
            );
        }
        let long = format!("multipart/form-data; boundary={}", "b".repeat(71));
        assert_eq!(model_field(&long, b""), Err(FormError::BadBoundary));
        assert_eq!(
            model_field(CT, b"no delimiter"),
            Err(FormError::NoDelimiter)
        );
        assert_eq!(
            model_field(
                CT,
                b"--XyZ\r\nContent-Disposition: form-data; name=model\r\n\r\nm"
            ),
            Err(FormError::Unterminated)
        );
        let e = FormError::DuplicateModel.to_filter_error();
        assert_eq!((e.status, e.code), (400, "invalid_multipart_body"));
    }
}
