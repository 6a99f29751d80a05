use super::*;

fn p(s: &str) -> Pattern {
    Pattern::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn spans(pat: &str, text: &str) -> Vec<String> {
    p(pat)
        .find_iter(text)
        .into_iter()
        .map(|(a, b)| text[a..b].to_string())
        .collect()
}

#[test]
fn literals_classes_and_repetitions() {
    assert_eq!(spans("cat", "a cat and a catalog"), ["cat", "cat"]);
    assert_eq!(spans(r"\d+", "a 12 b 345"), ["12", "345"]);
    assert_eq!(spans(r"[a-c]{2,3}", "xabcabz"), ["abc", "ab"]);
    assert_eq!(spans(r"colou?r", "color colour"), ["color", "colour"]);
    assert_eq!(spans(r"a(?:bc|d)+", "abcdbc ad"), ["abcdbc", "ad"]);
    assert_eq!(spans(r"x.y", "x\ny xzy"), ["xzy"]);
    assert_eq!(spans(r"(?s)x.y", "x\ny"), ["x\ny"]);
    assert_eq!(spans(r"[^0-9 ]+", "ab 12 cd"), ["ab", "cd"]);
    assert_eq!(spans(r"\s+", "a \t b"), [" \t "]);
    assert_eq!(
        spans(r"[[:upper:]][[:lower:]]+", "Hello World"),
        ["Hello", "World"]
    );
    assert_eq!(spans(r"\x41\x{42}", "zABz"), ["AB"]);
    assert_eq!(spans(r"a\.b", "a.b axb"), ["a.b"]);
}

#[test]
fn case_folding_is_ascii() {
    assert_eq!(
        spans("(?i)project falcon", "PROJECT Falcon"),
        ["PROJECT Falcon"]
    );
    assert_eq!(spans("(?i:ab)c", "ABc ABC"), ["ABc"]);
    assert_eq!(spans("a(?i)b", "aB AB"), ["aB"]);
    assert_eq!(spans("(?i)[a-c]+", "xAbCx"), ["AbC"]);
    assert_eq!(spans("(?i)é", "É é"), ["é"], "non-ASCII is not folded");
}

#[test]
fn assertions() {
    assert_eq!(spans(r"\bcat\b", "cat concat cats cat"), ["cat", "cat"]);
    assert_eq!(spans(r"\Bcat", "cat concat"), ["cat"]);
    assert_eq!(spans(r"^ab", "abab"), ["ab"]);
    assert_eq!(spans(r"ab$", "abab"), ["ab"]);
    assert_eq!(p(r"ab$").find_iter("abab"), [(2, 4)]);
    assert_eq!(spans(r"^\d+$", "123"), ["123"]);
    assert!(spans(r"^\d+$", "123a").is_empty());
    assert_eq!(spans(r"\bsecret\b", "top-secret_ secret."), ["secret"]);
    assert_eq!(spans(r"\b\d{3}\b", "12 345 6789 012"), ["345", "012"]);
}

#[test]
fn utf8_text_and_patterns() {
    assert_eq!(spans("é+", "aééb é"), ["éé", "é"]);
    assert_eq!(spans("[éa]+", "xaéax"), ["aéa"]);
    assert_eq!(spans("a.c", "aéc abc"), ["aéc", "abc"]);
    assert_eq!(spans("[^x]", "é"), ["é"]);
    assert_eq!(spans(r"\W+", "a—b"), ["—"]);
    assert_eq!(spans("日本", "日本語の日本"), ["日本", "日本"]);
    // Spans are character boundaries.
    for (a, b) in p(".").find_iter("aé日😀") {
        assert!("aé日😀".is_char_boundary(a) && "aé日😀".is_char_boundary(b));
    }
}

#[test]
fn masking_spans_cover_every_match() {
    // The earliest-ending match is `c`; the leftmost start of a match ending there is `c`'s,
    // and masking it destroys `abcd` too.
    assert_eq!(p("abcd|c").find_iter("abcd"), [(2, 3)]);
    assert_eq!(spans("a+", "aaa"), ["aaa"], "widened to the longest match");
    assert_eq!(spans("a+?", "aaa"), ["aaa"]);
    assert_eq!(spans("ab|b", "ab"), ["ab"]);
}

#[test]
fn refused_with_a_reason() {
    for (pattern, reason) in [
        ("a*", "empty string"),
        ("", "empty string"),
        (r"\b", "empty string"),
        ("(a|)", "empty string"),
        ("(", "unclosed group"),
        ("a)", "unopened group"),
        ("[a", "unclosed class"),
        ("a{3,2}", "max below min"),
        ("a{1001}", "above 1000"),
        ("a**", "nested repetition"),
        ("*a", "without an operand"),
        (r"\p{L}", "Unicode classes"),
        (r"(\w)\1", "back references"),
        ("(?=a)", "look-ahead"),
        ("(?<=a)b", "look-behind"),
        ("(?m)^a", "multi-line"),
        ("[é-ü]", "non-ASCII"),
        ("[^é]", "negated class"),
        ("[a&&b]", "set operations"),
        (r"\q", "unknown escape"),
        ("(?x)a", "verbose"),
        ("[z-a]", "out of order"),
    ] {
        let e = Pattern::new(pattern)
            .err()
            .unwrap_or_else(|| panic!("{pattern} accepted"));
        assert!(e.0.contains(reason), "{pattern}: {e}");
    }
    assert!(Pattern::new(&"a".repeat(1001)).is_err());
    // Automata that would blow up are refused, not built.
    let e = Pattern::new("[ab]*a[ab]{20}c").expect_err("too complex");
    assert!(e.0.contains("too complex"), "{e}");
}

#[test]
fn names_and_groups_are_accepted() {
    assert_eq!(spans("(?P<x>ab)(?<y>c)", "abc"), ["abc"]);
    assert_eq!(spans("[]a]+", "]a]"), ["]a]"]);
    assert_eq!(spans("[a-]+", "-a-"), ["-a-"]);
}

/// A small deterministic generator (no dependency): xorshift.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

fn random_pattern(r: &mut Rng, depth: u32) -> String {
    let atom = |r: &mut Rng| -> String {
        r.pick(&[
            "a", "b", "c", " ", "_", "1", ".", r"\d", r"\w", r"\s", "[ab]", "[^a ]", "[a-c1]",
            r"\W", "-",
        ])
        .to_string()
    };
    let mut s = String::new();
    for _ in 0..=r.below(3) {
        let mut piece = if depth > 0 && r.below(4) == 0 {
            let inner = random_pattern(r, depth - 1);
            if r.below(2) == 0 {
                format!("(?:{inner}|{})", random_pattern(r, depth - 1))
            } else {
                format!("(?:{inner})")
            }
        } else {
            atom(r)
        };
        piece.push_str(r.pick(&["", "", "", "", "*", "+", "?", "{1,2}", "{2}"]));
        if r.below(10) == 0 {
            s.push_str(r.pick(&[r"\b", r"\B", "^", "$"]));
        }
        s.push_str(&piece);
    }
    if r.below(8) == 0 {
        s = format!("(?i){s}");
    }
    s
}

/// Differential test against the `regex` crate in its ASCII mode (`(?-u)` on bytes, which is
/// this matcher's meaning on ASCII text): the same patterns find a match in the same texts,
/// and every match the `regex` crate finds overlaps one of our spans.
#[test]
fn agrees_with_the_regex_crate() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut compared = 0;
    for _ in 0..2500 {
        let pat = random_pattern(&mut r, 1);
        let Ok(ours) = Pattern::new(&pat) else {
            continue;
        };
        let theirs = regex::bytes::Regex::new(&format!("(?-u){pat}")).expect("regex accepts it");
        for _ in 0..8 {
            let len = r.below(24) as usize;
            let text: String = (0..len)
                .map(|_| r.pick(&["a", "b", "c", " ", "_", "1", "-", "A", "\n"]))
                .collect();
            assert_eq!(
                ours.is_match(&text),
                theirs.is_match(text.as_bytes()),
                "pattern {pat:?} on {text:?}"
            );
            let found = ours.find_iter(&text);
            for w in found.windows(2) {
                assert!(w[0].1 <= w[1].0, "{pat:?} on {text:?}: {found:?}");
            }
            for m in theirs.find_iter(text.as_bytes()) {
                if m.start() == m.end() {
                    continue;
                }
                assert!(
                    found.iter().any(|(a, b)| *a < m.end() && m.start() < *b),
                    "{pat:?} on {text:?}: regex match {:?} not covered by {found:?}",
                    m.range()
                );
            }
            compared += 1;
        }
    }
    assert!(compared > 15_000, "{compared}");
}

#[test]
fn automata_stay_small_for_typical_rules() {
    for pat in [
        r"(?i)\bproject\s+(falcon|eagle)\b",
        r"(?i)\b(password|passwd|secret)\s*[:=]",
        r"\bACME-\d{6}\b",
        r"(?i)internal[- ]only",
    ] {
        assert!(p(pat).size() < 200, "{pat}: {}", p(pat).size());
    }
}
