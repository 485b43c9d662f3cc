//! `RUN --mount` values: every key, every type's defaults, every error, data-driven.

use kiln_frontend::instructions::{parse_mount, parse_mounts, Mount, MountError};

/// A mount in one line: type, then only the fields that are set.
fn describe(mount: &Mount) -> String {
    let mut text = mount.mount_type.to_string();
    let mut add = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            text += &format!(" {name}={value}");
        }
    };
    add("from", mount.from.clone());
    add("source", mount.source.clone());
    add("target", mount.target.clone());
    add("id", mount.id.clone());
    add(
        "sharing",
        mount
            .sharing
            .map(|sharing| format!("{sharing:?}").to_lowercase()),
    );
    add("size", mount.size_limit.map(|size| size.to_string()));
    add("env", mount.env.clone());
    add("mode", mount.mode.map(|mode| format!("{mode:o}")));
    add("uid", mount.uid.map(|uid| uid.to_string()));
    add("gid", mount.gid.map(|gid| gid.to_string()));
    text += if mount.read_only { " ro" } else { " rw" };
    if mount.required {
        text += " required";
    }
    text
}

/// Checks that `value` parses to `expected` (see `describe`), or fails with the message
/// `expected` when it starts with `error: `.
#[track_caller]
fn check(value: &str, expected: &str) {
    let got = match parse_mount(value) {
        Ok(mount) => describe(&mount),
        Err(error) => format!("error: {error}"),
    };
    assert_eq!(got, expected, "for {value:?}");
}

#[track_caller]
fn check_suggestion(value: &str, suggestion: &str) {
    let error = parse_mount(value).expect_err("accepted");
    assert_eq!(
        error.suggestion(),
        Some(suggestion),
        "for {value:?}: {error}"
    );
}

#[test]
fn bind_defaults() {
    check("target=/src", "bind target=/src ro");
    check("type=bind,target=/src", "bind target=/src ro");
    check(
        "type=bind,source=sub,from=build,target=/src",
        "bind from=build source=sub target=/src ro",
    );
    check("src=a,dst=/b", "bind source=a target=/b ro");
    check("destination=/b", "bind target=/b ro");
    check("TYPE=BIND,Target=/b", "bind target=/b ro");
}

#[test]
fn read_only_forms() {
    check("target=/b,rw", "bind target=/b rw");
    check("target=/b,readwrite", "bind target=/b rw");
    check("target=/b,rw=true", "bind target=/b rw");
    check("target=/b,rw=0", "bind target=/b ro");
    check("target=/b,readwrite=false", "bind target=/b ro");
    check(
        "type=cache,target=/c,ro",
        "cache target=/c id=/c sharing=shared ro",
    );
    check(
        "type=cache,target=/c,readonly",
        "cache target=/c id=/c sharing=shared ro",
    );
    check(
        "type=cache,target=/c,ro=T",
        "cache target=/c id=/c sharing=shared ro",
    );
    check(
        "type=cache,target=/c,readonly=FALSE",
        "cache target=/c id=/c sharing=shared rw",
    );
    check("target=/b,ro=maybe", "error: invalid value for ro: maybe");
    check("target=/b,rw=yes", "error: invalid value for rw: yes");
}

#[test]
fn cache_options() {
    check(
        "type=cache,target=/root/.cache/",
        "cache target=/root/.cache/ id=/root/.cache sharing=shared rw",
    );
    check(
        "type=cache,target=/c,id=go",
        "cache target=/c id=go sharing=shared rw",
    );
    check(
        "type=cache,target=/c,sharing=private",
        "cache target=/c id=/c sharing=private rw",
    );
    check(
        "type=cache,target=/c,sharing=LOCKED",
        "cache target=/c id=/c sharing=locked rw",
    );
    check(
        "type=cache,target=/c,from=base,source=/x",
        "cache from=base source=/x target=/c id=/c sharing=shared rw",
    );
    check(
        "type=cache,target=/c,mode=0700,uid=1000,gid=1001",
        "cache target=/c id=/c sharing=shared mode=700 uid=1000 gid=1001 rw",
    );
    check(
        "type=cache,target=/c,sharing=everyone",
        "error: unsupported sharing value \"everyone\"",
    );
    check(
        "type=cache,target=/c,mode=9",
        "error: invalid value for mode: 9",
    );
    check(
        "type=cache,target=/c,mode=-1",
        "error: invalid value for mode: -1",
    );
    check(
        "type=cache,target=/c,uid=x",
        "error: invalid value for uid: x",
    );
    check(
        "type=cache,target=/c,gid=4294967296",
        "error: invalid value for gid: 4294967296",
    );
    check(
        "type=cache,target=/c,uid=4294967295",
        "cache target=/c id=/c sharing=shared uid=4294967295 rw",
    );
    check_suggestion("type=cache,target=/c,sharing=privat", "private");
}

#[test]
fn tmpfs_options() {
    check("type=tmpfs,target=/t", "tmpfs target=/t rw");
    check(
        "type=tmpfs,target=/t,size=64m",
        "tmpfs target=/t size=67108864 rw",
    );
    check(
        "type=tmpfs,target=/t,size=1.5GiB",
        "tmpfs target=/t size=1610612736 rw",
    );
    check(
        "type=tmpfs,target=/t,size=big",
        "error: invalid value for size: big",
    );
    check(
        "type=bind,target=/t,size=1m",
        "error: unexpected key 'size' for mount type 'bind'",
    );
    check(
        "type=tmpfs,target=/t,mode=0777",
        "error: mode not allowed for \"tmpfs\" type mounts",
    );
    check(
        "type=tmpfs,target=/t,sharing=shared",
        "error: invalid cache sharing set for tmpfs mount",
    );
}

#[test]
fn secret_defaults() {
    check(
        "type=secret,id=npmrc",
        "secret target=/run/secrets/npmrc id=npmrc ro",
    );
    check(
        "type=secret,source=token",
        "secret source=token target=/run/secrets/token id=token ro",
    );
    check(
        "type=secret,target=/root/.npmrc",
        "secret target=/root/.npmrc id=.npmrc ro",
    );
    check(
        "type=secret,id=aws,target=/root/.aws/credentials",
        "secret target=/root/.aws/credentials id=aws ro",
    );
    check(
        "type=secret,id=a/b",
        "secret target=/run/secrets/b id=a/b ro",
    );
    check(
        "type=secret,id=token,env=TOKEN",
        "secret id=token env=TOKEN ro",
    );
    check(
        "type=secret,id=token,env=TOKEN,target=/t",
        "secret target=/t id=token env=TOKEN ro",
    );
    check(
        "type=secret,id=t,required",
        "secret target=/run/secrets/t id=t ro required",
    );
    check(
        "type=secret,id=t,required=true,mode=0440,uid=1,gid=2",
        "secret target=/run/secrets/t id=t mode=440 uid=1 gid=2 ro required",
    );
    check(
        "type=secret,id=t,required=false",
        "secret target=/run/secrets/t id=t ro",
    );
}

#[test]
fn secret_errors() {
    check(
        "type=secret",
        "error: invalid secret mount. one of source, target required",
    );
    check(
        "type=secret,id=a,source=b",
        "error: both source and id can't be set",
    );
    check(
        "type=secret,id=a,from=x",
        "error: secret mount should not have a from",
    );
    check(
        "type=secret,id=a,sharing=shared",
        "error: secret mount should not define sharing",
    );
    check(
        "type=secret,id=a,required=maybe",
        "error: invalid value for required: maybe",
    );
    // `required` must come after the type that allows it.
    check(
        "required,type=secret,id=a",
        "error: unexpected key 'required' for mount type 'bind'",
    );
}

#[test]
fn ssh_defaults() {
    check(
        "type=ssh",
        "ssh target=/run/buildkit/ssh_agent.0 id=default ro",
    );
    check(
        "type=ssh,id=github,target=/sock,required",
        "ssh target=/sock id=github ro required",
    );
    check(
        "type=ssh,mode=0600,uid=1000",
        "ssh target=/run/buildkit/ssh_agent.0 id=default mode=600 uid=1000 ro",
    );
    check("type=ssh,source=x", "error: ssh does not support source");
}

#[test]
fn ssh_sockets_are_numbered_per_run() {
    let mounts = parse_mounts(&[
        "type=ssh",
        "target=/src",
        "type=ssh,id=b",
        "type=ssh,target=/s",
    ])
    .expect("valid");
    let targets: Vec<_> = mounts
        .iter()
        .map(|mount| mount.target.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        targets,
        vec![
            "/run/buildkit/ssh_agent.0",
            "/src",
            "/run/buildkit/ssh_agent.1",
            "/s"
        ]
    );
    assert!(parse_mounts(&["target=/a", "type=nope"]).is_err());
    assert_eq!(parse_mounts::<&str>(&[]), Ok(vec![]));
}

#[test]
fn type_errors() {
    check(
        "type=volume,target=/x",
        "error: unsupported mount type \"volume\"",
    );
    check_suggestion("type=cach,target=/x", "cache");
    check_suggestion("type=sceret,id=x", "secret");
}

#[test]
fn key_errors() {
    check(
        "target=/x,foo=bar",
        "error: unexpected key 'foo' in 'foo=bar'",
    );
    check_suggestion("targte=/x", "target");
    check_suggestion("target=/x,sharng=shared", "sharing");
    check(
        "target=/x,bogus",
        "error: invalid field 'bogus' must be a key=value pair",
    );
    check_suggestion("target=/x,readonyl", "readonly");
    check(
        "target=/x,required",
        "error: unexpected key 'required' for mount type 'bind'",
    );
    check(
        "target=/x,required=true",
        "error: unexpected key 'required' for mount type 'bind'",
    );
    check(
        "target=/x,mode=0700",
        "error: mode not allowed for \"bind\" type mounts",
    );
    check(
        "target=/x,uid=1",
        "error: uid not allowed for \"bind\" type mounts",
    );
    check(
        "target=/x,gid=1",
        "error: gid not allowed for \"bind\" type mounts",
    );
    check(
        "target=/x,sharing=shared",
        "error: invalid cache sharing set for bind mount",
    );
}

#[test]
fn targets() {
    // No target: the working directory, as BuildKit (real Dockerfiles rely on it).
    check("type=bind", "bind ro");
    check(
        "from=delve-src,src=/usr/src/delve,rw",
        "bind from=delve-src source=/usr/src/delve rw",
    );
    check("type=cache", "cache id=. sharing=shared rw");
    check("type=tmpfs,target=", "tmpfs rw");
    check("", "bind ro");
    check("target=/", "error: invalid mount target \"/\"");
    check("type=cache,target=//.", "error: invalid mount target \"/\"");
    // A relative target is kept: the converter joins it to the working directory.
    check("target=rel/dir", "bind target=rel/dir ro");
}

#[test]
fn csv_quoting() {
    check("\"target=/a,b\",source=x", "bind source=x target=/a,b ro");
    check(
        "target=/a,\"source=say \"\"hi\"\"\"",
        "bind source=say \"hi\" target=/a ro",
    );
    check(
        "target=/a,source=x\"y",
        "error: failed to parse csv mounts: bare \" in non-quoted-field",
    );
    check(
        "\"target=/a",
        "error: failed to parse csv mounts: extraneous or missing \" in quoted-field",
    );
}

#[test]
fn values_keep_equals_signs() {
    check(
        "type=secret,id=a=b",
        "secret target=/run/secrets/a=b id=a=b ro",
    );
}

#[test]
fn error_types_carry_facts() {
    assert_eq!(
        parse_mount("type=bind,target=/x,size=1"),
        Err(MountError::KeyNotForType {
            key: "size".to_string(),
            mount_type: kiln_frontend::instructions::MountType::Bind
        })
    );
}
