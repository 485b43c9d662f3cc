//! The sandbox: run a process in an isolated container (namespaces, pivot_root, caps, cgroups).
