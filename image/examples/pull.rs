//! Pulls one image into a root and prints the time taken: `pull ROOT REFERENCE`.
//! (A profiling aid for the pull pipeline; `kiln pull` is the real command.)

use std::time::Instant;

use kiln_image::{pull, Progress, PullOptions};
use kiln_registry::RegistryClient;
use kiln_snapshotter::Store;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments: Vec<String> = std::env::args().collect();
    let [_, root, reference] = arguments.as_slice() else {
        return Err("usage: pull ROOT REFERENCE".into());
    };
    let started = Instant::now();
    let store = Store::open(root)?;
    let client = RegistryClient::new()?;
    let reference = kiln_image::parse_reference(reference)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let pulled = runtime.block_on(pull(
        &store,
        &client,
        &reference,
        &PullOptions::default(),
        &Progress::none(),
    ))?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "{} layers, {} bytes downloaded in {:.3} s",
            pulled.snapshots.len(),
            pulled.bytes_downloaded,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
