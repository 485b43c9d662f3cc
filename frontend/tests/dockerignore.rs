//! `.dockerignore` and pattern matching: Docker's rules, one test per rule, and where they differ
//! from gitignore.

use kiln_frontend::dockerignore::{
    read_patterns, DockerIgnore, Error, MatchInfo, PatternError, PatternMatcher,
};

/// Parses `ignore_file` and checks each `(path, excluded)` through every way of asking: the
/// plain `matches`, and the walker form with parent results handed down directory by directory.
#[track_caller]
fn check(ignore_file: &str, expectations: &[(&str, bool)]) {
    let ignore =
        DockerIgnore::parse(ignore_file).unwrap_or_else(|error| panic!("{ignore_file:?}: {error}"));
    for &(path, excluded) in expectations {
        assert_eq!(
            ignore.matches(path),
            excluded,
            "matches({path:?}) with {ignore_file:?}"
        );
        assert_eq!(
            walk_matches(ignore.matcher(), path),
            excluded,
            "walker match of {path:?} with {ignore_file:?}"
        );
        let no_context = ignore
            .matcher()
            .matches_with_parent(path, &MatchInfo::default())
            .0;
        assert_eq!(
            no_context, excluded,
            "matches_with_parent({path:?}, default) with {ignore_file:?}"
        );
    }
}

/// Matches `path` the way a walker does: each parent directory first, handing its info down.
fn walk_matches(matcher: &PatternMatcher, path: &str) -> bool {
    let mut info = MatchInfo::default();
    let names: Vec<&str> = path.split('/').collect();
    for depth in 1..names.len() {
        info = matcher
            .matches_with_parent(&names[..depth].join("/"), &info)
            .1;
    }
    matcher.matches_with_parent(path, &info).0
}

/// Checks one pattern against paths with `PatternMatcher` directly.
#[track_caller]
fn check_pattern(pattern: &str, expectations: &[(&str, bool)]) {
    let matcher =
        PatternMatcher::new([pattern]).unwrap_or_else(|error| panic!("{pattern:?}: {error}"));
    for &(path, matched) in expectations {
        assert_eq!(
            matcher.matches(path),
            matched,
            "pattern {pattern:?} on {path:?}"
        );
        assert_eq!(
            walk_matches(&matcher, path),
            matched,
            "walker: pattern {pattern:?} on {path:?}"
        );
    }
}

#[track_caller]
fn check_bad(ignore_file: &str, expected_line: usize, expected: &str) {
    match DockerIgnore::parse(ignore_file) {
        Ok(_) => panic!("{ignore_file:?} was accepted"),
        Err(Error::Pattern { line, source }) => {
            assert_eq!(line, expected_line, "{ignore_file:?}");
            assert!(
                source.to_string().contains(expected),
                "{ignore_file:?}: {source} lacks {expected:?}"
            );
        }
        Err(other) => panic!("{ignore_file:?}: unexpected {other}"),
    }
}

#[track_caller]
fn check_skip(ignore_file: &str, expectations: &[(&str, bool)]) {
    let ignore =
        DockerIgnore::parse(ignore_file).unwrap_or_else(|error| panic!("{ignore_file:?}: {error}"));
    for &(dir, skippable) in expectations {
        assert_eq!(
            ignore.can_skip_dir(dir),
            skippable,
            "can_skip_dir({dir:?}) with {ignore_file:?}"
        );
    }
}

// --- reading the file -------------------------------------------------------------------------

#[test]
fn comment_only_in_column_one() {
    // A `#` after leading blanks is a pattern, not a comment (gitignore agrees, but `\#` is not
    // needed in Docker and a trailing `# x` is never a comment).
    check("# secret\n", &[("# secret", false), ("secret", false)]);
    check("  # secret\n", &[("# secret", true)]);
    check("foo # bar\n", &[("foo # bar", true), ("foo", false)]);
}

#[test]
fn blank_lines_and_whitespace_are_trimmed() {
    check(
        "\n\n   \n  foo  \n\t bar\t\n",
        &[("foo", true), ("bar", true), ("baz", false)],
    );
    assert_eq!(
        read_patterns("\n  a  \n\n b\n"),
        vec![(2, "a".to_string()), (4, "b".to_string())]
    );
}

#[test]
fn crlf_line_endings_and_byte_order_mark() {
    check("\u{feff}foo\r\nbar\r\n", &[("foo", true), ("bar", true)]);
    // Only the first line loses a byte order mark.
    check(
        "\u{feff}# comment\nfoo\n",
        &[("foo", true), ("# comment", false)],
    );
}

#[test]
fn leading_slash_is_the_context_root() {
    check("/foo\n", &[("foo", true), ("a/foo", false)]);
    check(
        "/a/b\n",
        &[("a/b", true), ("a/b/c", true), ("x/a/b", false)],
    );
    check("!/keep\n", &[]);
    assert_eq!(read_patterns("!/keep\n"), vec![(1, "!keep".to_string())]);
}

#[test]
fn trailing_slash_is_removed_so_files_match_too() {
    // gitignore's `foo/` matches only directories; Docker cleans the slash away, so a file
    // named `foo` is excluded too.
    check(
        "foo/\n",
        &[("foo", true), ("foo/bar", true), ("a/foo", false)],
    );
}

#[test]
fn patterns_are_cleaned() {
    check("a/./b/../c//d\n", &[("a/c/d", true), ("a/b/c/d", false)]);
    check("./foo\n", &[("foo", true)]);
    assert_eq!(read_patterns("a/../../b\n"), vec![(1, "../b".to_string())]);
}

#[test]
fn exclamation_after_blanks_and_with_blanks() {
    check(
        "*.md\n  !  README.md  \n",
        &[("README.md", false), ("other.md", true)],
    );
}

#[test]
fn lone_exclamation_is_an_error() {
    check_bad("foo\n!\n", 2, "illegal exclusion pattern");
    check_bad("!   \n", 1, "illegal exclusion pattern");
}

#[test]
fn malformed_patterns_are_errors_with_their_line() {
    check_bad("ok\n[\n", 2, "bad pattern");
    check_bad("a[]b\n", 1, "bad pattern");
    check_bad("a[-]b\n", 1, "bad pattern");
    check_bad("a[b-]\n", 1, "bad pattern");
    check_bad("a[^]\n", 1, "bad pattern");
    check_bad("a[z-a]\n", 1, "out of order");
    check_bad("foo\\\n", 1, "trailing backslash");
    check_bad("x\n\n[abc\n", 3, "unterminated");
}

#[test]
fn error_message_names_the_line() {
    let error = DockerIgnore::parse("a\n[\n").expect_err("bad pattern accepted");
    assert_eq!(error.to_string(), ".dockerignore line 2");
    let source = std::error::Error::source(&error).map(ToString::to_string);
    assert_eq!(
        source.as_deref(),
        Some("bad pattern \"[\": unterminated character class")
    );
}

#[test]
fn empty_file_and_comments_only_exclude_nothing() {
    check("", &[("anything", false)]);
    check(
        "# only\n# comments\n",
        &[("anything", false), ("only", false)],
    );
}

// --- matching ---------------------------------------------------------------------------------

#[test]
fn anchored_at_root_unlike_gitignore() {
    // gitignore's `foo` matches at any depth; Docker's only at the root.
    check(
        "foo\n",
        &[
            ("foo", true),
            ("foo/x", true),
            ("a/foo", false),
            ("a/b/foo", false),
            ("foobar", false),
        ],
    );
    check("*.log\n", &[("x.log", true), ("dir/x.log", false)]);
}

#[test]
fn matching_a_parent_directory_excludes_everything_under_it() {
    check(
        "dir\n",
        &[
            ("dir", true),
            ("dir/a", true),
            ("dir/a/b/c", true),
            ("dir2", false),
        ],
    );
    check("a/*\n", &[("a/b", true), ("a/b/c/d", true), ("a", false)]);
}

#[test]
fn star_does_not_cross_slash() {
    check_pattern("a*/b", &[("abc/b", true), ("a/c/b", false), ("a/b", true)]);
    check_pattern("*", &[("anything", true), ("a/b", true), (".hidden", true)]);
    check_pattern("*c", &[("abc", true), ("ab/c", false)]);
    check_pattern(
        "a*b*c*d*e*/f",
        &[
            ("axbxcxdxe/f", true),
            ("axbxcxdxexxx/f", true),
            ("axbxcxdxe/xxx/f", false),
        ],
    );
}

#[test]
fn question_mark_is_one_character_but_not_slash() {
    check_pattern(
        "abc?def",
        &[
            ("abcZdef", true),
            ("abcdef", false),
            ("abc/def", false),
            ("abcZZdef", false),
        ],
    );
    check_pattern("a?", &[("aé", true)]);
}

#[test]
fn double_star_matches_any_number_of_directories() {
    check_pattern(
        "**/foo",
        &[
            ("foo", true),
            ("a/foo", true),
            ("a/b/foo", true),
            ("a/foo/x", true),
            ("afoo", false),
        ],
    );
    check_pattern(
        "a/**/b",
        &[
            ("a/b", true),
            ("a/x/b", true),
            ("a/x/y/b", true),
            ("b", false),
            ("a/xb", false),
        ],
    );
    check_pattern(
        "**/*.go",
        &[("x.go", true), ("a/b/x.go", true), ("a/b/x.c", false)],
    );
    check_pattern(
        "dir/**",
        &[("dir", false), ("dir/a", true), ("dir/a/b", true)],
    );
    check_pattern("**", &[("a", true), ("a/b/c", true)]);
    check_pattern(
        "**/dir2/*",
        &[
            ("dir/dir2/file", true),
            ("dir2/file", true),
            ("dir/dir3/file", false),
        ],
    );
    check_pattern(
        "a**/*.txt",
        &[
            ("a/file.txt", true),
            ("a/dir/file.txt", true),
            ("b/file.txt", false),
        ],
    );
    check_pattern(
        "**/**/*.txt",
        &[
            ("file.txt", true),
            ("d/d/file.txt", true),
            ("d/d/file.txt2", false),
        ],
    );
}

#[test]
fn double_star_quirks_kept_from_patternmatcher() {
    // A leading `**` followed by literals is a plain suffix test: `**file` also matches `xfile`.
    check_pattern(
        "**file",
        &[("file", true), ("dir/file", true), ("dir/xfile", true)],
    );
    // A trailing `**` after literals is a plain prefix test.
    check_pattern(
        "foo**",
        &[
            ("foo", true),
            ("foobar", true),
            ("foo/x", true),
            ("fo", false),
        ],
    );
    check_pattern(
        "**/.foo",
        &[(".foo", true), ("bar.foo", false), ("x/.foo", true)],
    );
}

#[test]
fn character_classes() {
    check_pattern("a[b-d]e", &[("ace", true), ("ae", false), ("aae", false)]);
    check_pattern("a[^b-d]e", &[("aze", true), ("ace", false)]);
    check_pattern("[abc]", &[("a", true), ("d", false)]);
    check_pattern("a[\\]]b", &[("a]b", true), ("a\\b", false)]);
    check_pattern("x[*]", &[("x*", true), ("xa", false)]);
    check_pattern("[é-ë]", &[("ê", true), ("e", false)]);
}

#[test]
fn regex_metacharacters_are_literal() {
    check_pattern("abc.def", &[("abc.def", true), ("abcZdef", false)]);
    check_pattern("a(b)c/def", &[("a(b)c/def", true), ("a(b)c/xyz", false)]);
    check_pattern("a.|)$(}+{bc", &[("a.|)$(}+{bc", true)]);
    check_pattern("a^b", &[("a^b", true)]);
    check_pattern(
        "dist/*.whl",
        &[
            (
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                true,
            ),
            ("dist/x.tar", false),
        ],
    );
}

#[test]
fn backslash_escapes() {
    check_pattern("a\\*b", &[("a*b", true), ("axb", false)]);
    check_pattern("a\\\\", &[("a\\", true)]);
    check_pattern("\\[x\\]", &[("[x]", true), ("x", false)]);
}

#[test]
fn last_match_wins() {
    check("*.go\n!main.go\n", &[("main.go", false), ("util.go", true)]);
    check("!main.go\n*.go\n", &[("main.go", true)]);
    check("a\n!a\na\n", &[("a", true)]);
}

#[test]
fn negation_re_includes_under_excluded_dir_unlike_gitignore() {
    // gitignore cannot re-include a file whose parent directory is excluded; Docker can.
    check(
        "docs\n!docs/README.md\n",
        &[
            ("docs/README.md", false),
            ("docs/other.md", true),
            ("docs", true),
        ],
    );
    check("docs/\n!docs/README.md\n", &[("docs/README.md", false)]);
    check(
        "docs/*\n!docs/README.md\n",
        &[("docs/README.md", false), ("docs/x", true)],
    );
    check(
        "**\n!util/docker/web\n",
        &[("util/docker/web/foo", false), ("util/docker/x", true)],
    );
    check(
        "**\n!util/docker/web\nutil/docker/web/foo\n",
        &[
            ("util/docker/web/foo", true),
            ("util/docker/web/bar", false),
        ],
    );
}

#[test]
fn everything_but_one_file() {
    check(
        "*\n!Dockerfile\n!src\n",
        &[
            ("Dockerfile", false),
            ("src/main.rs", false),
            ("README", true),
            ("x/y", true),
        ],
    );
}

#[test]
fn paths_are_normalized_before_matching() {
    check(
        "foo\n",
        &[
            ("/foo", true),
            ("./foo/bar", true),
            ("foo/", true),
            ("x/../foo", true),
        ],
    );
    // The root itself is never excluded.
    check("*\n", &[(".", false), ("/", false), ("", false)]);
}

#[test]
fn matcher_reports_exclusions_and_patterns() {
    let ignore = DockerIgnore::parse("# c\nfoo/\n\n!/bar/baz\n").expect("valid");
    assert_eq!(
        ignore.patterns(),
        vec!["foo".to_string(), "!bar/baz".to_string()]
    );
    assert_eq!(ignore.pattern_lines(), &[2, 4]);
    assert!(ignore.matcher().has_exclusions());
    assert!(!PatternMatcher::new(["a", "  ", "b"])
        .expect("valid")
        .has_exclusions());
    assert_eq!(
        PatternMatcher::new(["a", "  ", "b"])
            .expect("valid")
            .patterns()
            .len(),
        2
    );
    assert_eq!(
        PatternMatcher::new(["!"]).expect_err("lone !"),
        PatternError::LoneExclamation
    );
}

// --- skipping directories ---------------------------------------------------------------------

#[test]
fn excluded_dir_without_negations_is_skipped() {
    check_skip(
        "node_modules\n",
        &[
            ("node_modules", true),
            ("src", false),
            ("node_modules/x", true),
        ],
    );
    check_skip(
        "**/target\n",
        &[("target", true), ("a/target", true), ("a", false)],
    );
}

#[test]
fn excluded_dir_is_walked_when_a_negation_may_reach_inside() {
    check_skip(
        "docs\n!docs/README.md\n",
        &[("docs", false), ("docs/sub", true)],
    );
    check_skip(
        "*\n!src/keep\n",
        &[("src", false), ("other", true), ("src/x", true)],
    );
    // A negation with a leading `**` can reach into any directory.
    check_skip("vendor\n!**/*.go\n", &[("vendor", false)]);
    check_skip(
        "vendor\n!vendor/*/LICENSE\n",
        &[("vendor", false), ("vendor/a", false), ("vendor/a/b", true)],
    );
    // A negation elsewhere does not prevent skipping.
    check_skip("vendor\n!docs/x\n", &[("vendor", true)]);
}

#[test]
fn skip_answers_agree_with_matching() {
    // Every file under a skippable directory must really be excluded.
    let cases = [
        "docs\n!docs/README.md\n",
        "*\n!src/keep\n",
        "a\n!a/b*/c\n",
        "**\n!x/**/y\n",
        "a/**\n!a/b\n",
        "foo**\n!foob\n",
    ];
    let paths = [
        "a",
        "a/b",
        "a/b/c",
        "a/bx/c",
        "a/c",
        "docs",
        "docs/README.md",
        "docs/z",
        "src",
        "src/keep",
        "src/keep/f",
        "x",
        "x/y",
        "x/q/y",
        "x/q",
        "foo",
        "foob",
        "foobar",
        "foob/c",
    ];
    for case in cases {
        let ignore = DockerIgnore::parse(case).expect("valid");
        for dir in paths {
            if !ignore.can_skip_dir(dir) {
                continue;
            }
            for path in paths {
                if path.starts_with(&format!("{dir}/")) {
                    assert!(
                        ignore.matches(path),
                        "{case:?}: skipped {dir:?} but {path:?} is included"
                    );
                }
            }
        }
    }
}

#[test]
fn include_lists_skip_dirs_nothing_can_match_inside() {
    let includes = PatternMatcher::new(["src/*.rs", "docs/book"]).expect("valid");
    assert!(includes.can_skip_unmatched_dir("target"));
    assert!(!includes.can_skip_unmatched_dir("src"));
    assert!(!includes.can_skip_unmatched_dir("docs"));
    assert!(includes.can_skip_unmatched_dir("docs/other"));
    // A matched directory is never skipped as unmatched.
    assert!(!includes.can_skip_unmatched_dir("docs/book"));
    assert!(!PatternMatcher::new(["**/*.rs"])
        .expect("valid")
        .can_skip_unmatched_dir("anything"));
}

#[test]
fn hostile_patterns_do_not_blow_up() {
    // Many stars against a long near-miss: the matcher is linear, not backtracking.
    let pattern = "*a".repeat(200) + "b";
    let path = "a".repeat(5000);
    check_pattern(&pattern, &[(path.as_str(), false)]);
    let deep = "d/".repeat(300) + "f";
    check_pattern("**/**/**/**/f", &[(deep.as_str(), true)]);
    assert!(DockerIgnore::parse("[[[[\n").is_err());
    assert!(DockerIgnore::parse("\\").is_err());
    assert!(DockerIgnore::parse("!!\n\u{0}\n").is_ok());
}

/// A small deterministic generator, so the randomized test needs no dependency.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % bound
    }
}

#[test]
fn randomized_patterns_agree_across_apis_and_skips_are_sound() {
    let pieces = [
        "a", "b", "ab", "*", "?", "**", "/", "[ab]", "[^a]", "\\*", "[", "\\", "!", ".",
    ];
    let names = ["a", "b", "ab", "*"];
    let mut random = Lcg(7);
    // Every path of up to three names.
    let mut paths: Vec<String> = Vec::new();
    for first in names {
        paths.push(first.to_string());
        for second in names {
            paths.push(format!("{first}/{second}"));
            for third in names {
                paths.push(format!("{first}/{second}/{third}"));
            }
        }
    }
    let mut compiled = 0;
    for _ in 0..120 {
        let count = 1 + random.below(3);
        let patterns: Vec<String> = (0..count)
            .map(|_| {
                let length = 1 + random.below(4);
                (0..length)
                    .map(|_| pieces[random.below(pieces.len())])
                    .collect()
            })
            .collect();
        let Ok(matcher) = PatternMatcher::new(&patterns) else {
            continue;
        };
        compiled += 1;
        for path in &paths {
            let expected = matcher.matches(path);
            assert_eq!(
                walk_matches(&matcher, path),
                expected,
                "{patterns:?} on {path:?}"
            );
            if matcher.can_skip_matched_dir(path) {
                for below in paths
                    .iter()
                    .filter(|other| other.starts_with(&format!("{path}/")))
                {
                    assert!(
                        matcher.matches(below),
                        "{patterns:?}: skipped matched {path:?} but {below:?} is not matched"
                    );
                }
            }
            if matcher.can_skip_unmatched_dir(path) {
                for below in paths
                    .iter()
                    .filter(|other| other.starts_with(&format!("{path}/")))
                {
                    assert!(
                        !matcher.matches(below),
                        "{patterns:?}: skipped unmatched {path:?} but {below:?} is matched"
                    );
                }
            }
        }
    }
    assert!(compiled > 40, "only {compiled} pattern sets compiled");
}
