//! Test harness: a real registry, a fault proxy, and builders for seed images.
//!
//! - [`TestRegistry`]: Debian's `docker-registry` (distribution 2.8) on a free loopback
//!   port, anonymous, with token auth ([`TokenPolicy`], a harness-run JWT issuer) or with
//!   htpasswd, optionally over TLS; killed by pid and its storage removed on drop.
//! - [`FaultProxy`]: a proxy in front of it that injects [`Fault`]s and counts requests.
//! - [`HttpServer`]: a scripted in-test server for answers no real registry gives.
//! - [`ImageBuilder`], [`LayerBuilder`], [`BuiltIndex`], and seeds: [`busybox_image`],
//!   [`many_layer_image`], [`special_files_image`].

pub mod fault_proxy;
pub mod http;
pub mod image;
pub mod registry;
pub mod token_server;

pub use fault_proxy::{Fault, FaultProxy, ProxiedRequest};
pub use http::{HttpRequest, HttpResponse, HttpServer, Reply};
pub use image::{
    busybox_image, many_layer_image, special_files_image, BuiltImage, BuiltIndex, ImageBuilder,
    Layer, LayerBuilder,
};
pub use registry::{HarnessError, TestAuth, TestRegistry, TestRegistryOptions, ADMIN_USER};
pub use token_server::{TokenPolicy, TokenRequest, TokenServer, TokenUser};

/// A two-worker tokio runtime, for tests that are not `#[tokio::test]`.
pub fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => panic!("building a tokio runtime: {error}"),
    }
}
