//! Shared image types: digests, descriptors, platforms, image config, manifests and indexes.
