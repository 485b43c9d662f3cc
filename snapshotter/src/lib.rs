//! The store: content-addressed blobs, metadata, overlayfs snapshots, layer apply and diff.
