#!/usr/bin/env python3
"""config-diff.py A.tar B.tar: what image-diff leaves out, for two docker-archives.

image-diff compares the flattened filesystems and the runtime config; this compares the
rest of the image config that users and tools see: the top-level fields (created, author,
comment, container_config, docker_version, ...), the number of layers, and the history
(created_by, empty_layer, comment), entry by entry. Timestamps are compared only for
presence. Exit 0: same; exit 1: differences listed.
"""
import json
import sys
import tarfile

TOP_IGNORED = {"config", "rootfs", "history"}


def load(path):
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))[0]
        config = json.load(tar.extractfile(manifest["Config"]))
    return config, len(manifest["Layers"])


def main(a_path, b_path):
    (a, a_layers), (b, b_layers) = load(a_path), load(b_path)
    diffs = []
    if a_layers != b_layers:
        diffs.append(f"layers: A: {a_layers}  B: {b_layers}")
    for key in sorted((set(a) | set(b)) - TOP_IGNORED):
        va, vb = a.get(key), b.get(key)
        if key == "created":
            va, vb = ("<set>" if va else None), ("<set>" if vb else None)
        if va != vb:
            diffs.append(f"top-level {key}: A: {json.dumps(va)}  B: {json.dumps(vb)}")
    ha, hb = a.get("history") or [], b.get("history") or []
    if len(ha) != len(hb):
        diffs.append(f"history: A: {len(ha)} entries  B: {len(hb)} entries")
    for i, (ea, eb) in enumerate(zip(ha, hb)):
        for field in ("created_by", "empty_layer", "comment", "author"):
            va, vb = ea.get(field), eb.get(field)
            if field == "empty_layer":
                va, vb = bool(va), bool(vb)
            if va != vb:
                diffs.append(f"history[{i}].{field}: A: {json.dumps(va)}  B: {json.dumps(vb)}")
        if bool(ea.get("created")) != bool(eb.get("created")):
            diffs.append(f"history[{i}].created: A: {'set' if ea.get('created') else 'absent'}  "
                         f"B: {'set' if eb.get('created') else 'absent'}")
    for d in diffs:
        print(d)
    print(f"config-diff: {len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
