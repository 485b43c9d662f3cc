//! Registry client: OCI distribution API v2 pull and push, auth, retries.
