//! Exporters: image config and manifest, OCI layout, docker-archive, push, cache export.
