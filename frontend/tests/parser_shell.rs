//! The shell-word lexer as the instructions layer uses it: expansion results, the variables a
//! word used and missed, word splitting, and the switches BuildKit's callers set.

use std::collections::{BTreeSet, HashMap};

use kiln_frontend::shell::{Env, Lexer, NoEnv, ProcessedWord};

fn environment(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn names(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|item| item.to_string()).collect()
}

/// One case: input, environment, expected result (`None` for an error), used, missed.
fn check(
    input: &str,
    env: &[(&str, &str)],
    expected: Option<&str>,
    matched: &[&str],
    unmatched: &[&str],
) {
    let lexer = Lexer::new('\\');
    match (lexer.process_word(input, &environment(env)), expected) {
        (
            Ok(ProcessedWord {
                result,
                matched: found,
                unmatched: missing,
                ..
            }),
            Some(expected),
        ) => {
            assert_eq!(result, expected, "{input}");
            assert_eq!(found, names(matched), "{input}: matched");
            assert_eq!(missing, names(unmatched), "{input}: unmatched");
        }
        (Err(_), None) => {}
        (outcome, expected) => panic!("{input}: got {outcome:?}, expected {expected:?}"),
    }
}

#[test]
fn reports_matched_and_unmatched_variables() {
    let set = [("FOO", "xxx"), ("BAR", "")];
    check("x", &[], Some("x"), &[], &[]);
    check("x ${UNUSED}", &[], Some("x "), &[], &["UNUSED"]);
    check(
        "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
        &set,
        Some("xxx  ccc"),
        &["FOO", "BAR"],
        &["BAZ"],
    );
    check(
        "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
        &set,
        Some("xxx bbb ccc"),
        &["FOO", "BAR"],
        &["BAZ"],
    );
    check(
        "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
        &set,
        Some("aaa bbb "),
        &["FOO", "BAR"],
        &["BAZ"],
    );
    check(
        "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
        &set,
        Some("aaa  "),
        &["FOO", "BAR"],
        &["BAZ"],
    );
    check("${FOO?aaa}", &set, Some("xxx"), &["FOO"], &[]);
    check("${BAR?bbb}", &set, Some(""), &["BAR"], &[]);
    check("${BAZ?ccc}", &set, None, &[], &[]);
    check("${BAR:?bbb}", &set, None, &[], &[]);
    check("${FOO=aaa}", &set, None, &[], &[]);
    check("${FOO:#}", &[], None, &[], &[]);
    check("${FOO:%%}", &[], None, &[], &[]);
}

#[test]
fn pattern_modifiers() {
    check(
        "${FOO#()[]{\\}^$.\\*\\?|\\\\}",
        &[("FOO", "()[]{}^$.*?|\\x")],
        Some("x"),
        &["FOO"],
        &[],
    );
    check(
        "${FOO%%\\**}",
        &[("FOO", "xx**")],
        Some("xx"),
        &["FOO"],
        &[],
    );
    check("${FOO#*x*y}", &[("FOO", "xxyy")], Some("y"), &["FOO"], &[]);
    check("${FOO#*}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]);
    check("${FOO##*x}", &[("FOO", "xxyy")], Some("yy"), &["FOO"], &[]);
    check(
        "${FOO#$BAR}",
        &[("FOO", "xxyy"), ("BAR", "x")],
        Some("xyy"),
        &["FOO", "BAR"],
        &[],
    );
    check("${FOO#?\\?}", &[("FOO", "???y")], Some("?y"), &["FOO"], &[]);
    check(
        "${ABC:-.}${FOO%x}${ABC:-.}",
        &[("FOO", "xxyy")],
        Some(".xxyy."),
        &["FOO"],
        &["ABC"],
    );
    check(
        "${FOO%%\\**\\*}",
        &[("FOO", "a***yy*")],
        Some("a"),
        &["FOO"],
        &[],
    );
    check(
        "${FOO/x/y}",
        &[("FOO", "xxyy")],
        Some("yxyy"),
        &["FOO"],
        &[],
    );
    check(
        "${FOO//x/y}",
        &[("FOO", "xxyy")],
        Some("yyyy"),
        &["FOO"],
        &[],
    );
    check(
        "${FOO//\\//-}",
        &[("FOO", "a/b/c")],
        Some("a-b-c"),
        &["FOO"],
        &[],
    );
    check(
        "${FOO//?/$BAR}",
        &[("FOO", "ab"), ("BAR", "!")],
        Some("!!"),
        &["FOO", "BAR"],
        &[],
    );
    check("${FOO/x}", &[("FOO", "x")], None, &[], &[]);
}

#[test]
fn words_split_only_unquoted_expansions() {
    let env = environment(&[("space", "abc  def"), ("leading", "  ab c")]);
    let lexer = Lexer::new('\\');
    let split = |input: &str| lexer.process_words(input, &env).unwrap();
    assert_eq!(split("hello${space}bye"), ["helloabc", "defbye"]);
    assert_eq!(split("hello\"${space}\"bye"), ["helloabc  defbye"]);
    assert_eq!(split("hello${leading}def"), ["hello", "ab", "cdef"]);
    assert_eq!(split("a\\ b 'c d' \"e f\""), ["a b", "c d", "e f"]);
    // Like BuildKit, text gathered before a `${...}` with a modifier is dropped from the words
    // (its words buffer is shared with the nested call); the expanded word is unaffected.
    assert_eq!(split("x${none:-y}z"), ["yz"]);
    assert_eq!(
        lexer.process_word("x${none:-y}z", &env).unwrap().result,
        "xyz"
    );
}

#[test]
fn switches_used_by_callers() {
    // Heredoc detection: quotes and escapes kept, unset variables left as written.
    let raw = Lexer {
        raw_quotes: true,
        raw_escapes: true,
        skip_unset_env: true,
        ..Lexer::new('\\')
    };
    assert_eq!(
        raw.process_words("RUN <<'EOF' $X \\$Y", &NoEnv).unwrap(),
        ["RUN", "<<'EOF'", "$X", "\\$Y"]
    );
    assert_eq!(
        raw.process_words("cat <<  EOF > out", &NoEnv).unwrap(),
        ["cat", "<<  EOF", ">", "out"]
    );
    // Quotes as ordinary characters.
    let literal = Lexer {
        skip_process_quotes: true,
        ..Lexer::new('\\')
    };
    assert_eq!(
        literal.process_word("'a b' \"$X\"", &NoEnv).unwrap().result,
        "'a b' \"\""
    );
    // Backtick escape (Windows files): the backslash is an ordinary character.
    let windows = Lexer::new('`');
    let env = environment(&[("DIR", "C:\\app")]);
    assert_eq!(
        windows
            .process_word("$DIR\\bin `$DIR \"a`\"b\"", &env)
            .unwrap()
            .result,
        "C:\\app\\bin $DIR a\"b"
    );
}

#[test]
fn ordered_environments_and_closures() {
    // An ordered list: the later definition wins, as with BuildKit's EnvsFromSlice.
    let list: Vec<(String, String)> = vec![("A".into(), "1".into()), ("A".into(), "2".into())];
    assert_eq!(
        Lexer::new('\\').process_word("$A", &list).unwrap().result,
        "2"
    );
    let lookup = |name: &str| (name == "B").then(|| "closure".to_string());
    assert_eq!(
        Lexer::new('\\')
            .process_word("${B}-${C:-none}", &lookup)
            .unwrap()
            .result,
        "closure-none"
    );
    assert_eq!(Env::lookup(&NoEnv, "A"), None);
}

#[test]
fn errors_name_the_word() {
    let error = Lexer::new('\\')
        .process_word("${X:?X must be set}", &NoEnv)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "failed to process \"${X:?X must be set}\": X: X must be set"
    );
    let error = Lexer::new('\\').process_word("'open", &NoEnv).unwrap_err();
    assert_eq!(
        error.to_string(),
        "failed to process \"'open\": unexpected end of statement while looking for matching single-quote"
    );
}
