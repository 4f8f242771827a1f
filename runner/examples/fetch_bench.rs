//! Benchmark helper: `fetch_bench STORE URL SHA256 [NAME]` ensures one tool of format `file`
//! (fetch, verify, store) and prints whether it was a cache hit. Used by `bench/tools.sh`.
#![forbid(unsafe_code)]

use std::path::Path;

use bulwark_protocol::{IpNet, ToolFormat, ToolSpec};
use bulwark_runner::tools::{FetchPolicy, Store, UnpackMode};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, store, url, sha256, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: fetch_bench STORE URL SHA256 [NAME]");
    };
    let name = rest.first().map_or("bench", String::as_str);
    let policy = FetchPolicy {
        allow_private: vec![IpNet::parse("127.0.0.1").map_err(anyhow::Error::msg)?],
        ..FetchPolicy::default()
    };
    let store = Store::open(Path::new(store))?;
    let tool = ToolSpec {
        name: name.to_owned(),
        url: url.clone(),
        sha256: sha256.clone(),
        format: Some(ToolFormat::File),
    };
    let resolved = store.ensure(&tool, &policy, UnpackMode::Tool)?;
    println!(
        "{} cache_hit={}",
        resolved.dir.display(),
        resolved.cache_hit
    );
    Ok(())
}
