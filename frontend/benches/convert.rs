//! Benchmark: parse + convert a generated 5,000-instruction multi-stage Dockerfile (goal < 20 ms).

use kiln_frontend::convert::{convert, ConvertOptions};
use kiln_frontend::resolver::OfflineResolver;
use kiln_types::Platform;

// The allocator the `kiln` binary uses (cli/src/main.rs): a third of the conversion's
// instructions are small allocations, where glibc's malloc is slow.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

/// 50 stages of 100 instructions each (every fifth built on the one before): ARG, ENV, WORKDIR, COPY (context and --from), RUN
/// with mounts, LABEL, EXPOSE, USER.
fn generated_dockerfile() -> String {
    let mut text = String::from("ARG BASE=alpine:3.20\n");
    let mut count = 1;
    for stage in 0..50 {
        // Every fifth stage builds on the previous one; the others start from the image.
        if stage % 5 == 4 {
            text.push_str(&format!("FROM stage{} AS stage{stage}\n", stage - 1));
        } else {
            text.push_str(&format!("FROM ${{BASE}} AS stage{stage}\n"));
        }
        count += 1;
        let mut index = 0;
        while index < 99 {
            let line = match index % 9 {
                0 => format!("ARG VALUE{index}=v{stage}-{index}\n"),
                1 => format!("ENV KEY{index}=${{VALUE{}}} OTHER{index}=x\n", index - 1),
                2 => format!("WORKDIR /work/{stage}/{index}\n"),
                3 => format!("COPY src/{stage}/{index}.txt ./\n"),
                4 => format!(
                    "RUN --mount=type=cache,target=/cache/{index} echo {stage} {index} $KEY{}\n",
                    index - 3
                ),
                5 if stage > 0 => format!("COPY --from=stage{} /work /from/{index}\n", stage - 1),
                5 => format!("COPY --link a{index} /a{index}\n"),
                6 => format!("LABEL stage=\"{stage}\" index=\"{index}\"\n"),
                7 => format!("EXPOSE {}\n", 8000 + index),
                _ => "USER 1000:1000\n".to_string(),
            };
            text.push_str(&line);
            index += 1;
            count += 1;
        }
    }
    assert!(count >= 5000, "{count}");
    text
}

#[divan::bench]
fn parse_and_convert_5000_instructions(bencher: divan::Bencher) {
    let text = generated_dockerfile();
    let resolver = OfflineResolver;
    let mut options = ConvertOptions::new(&resolver);
    options.build_platform = Some(Platform::parse("linux/amd64").unwrap());
    bencher.bench_local(|| convert(divan::black_box(&text), "Dockerfile", &options).unwrap());
}

#[divan::bench]
fn parse_only_5000_instructions(bencher: divan::Bencher) {
    let text = generated_dockerfile();
    bencher.bench_local(|| {
        kiln_frontend::parser::parse("Dockerfile", divan::black_box(&text)).unwrap()
    });
}

/// The op digests alone (sha256 over each op's encoding), the largest part of a conversion.
#[divan::bench]
fn digest_ops_of_5000_instructions(bencher: divan::Bencher) {
    let text = generated_dockerfile();
    let resolver = OfflineResolver;
    let mut options = ConvertOptions::new(&resolver);
    options.build_platform = Some(Platform::parse("linux/amd64").unwrap());
    let result = convert(&text, "Dockerfile", &options).unwrap();
    let ops: Vec<_> = result
        .definition
        .vertices()
        .iter()
        .map(|vertex| vertex.op.clone())
        .collect();
    bencher.bench_local(|| {
        for op in divan::black_box(&ops) {
            divan::black_box(kiln_frontend::dag::op_digest(op).unwrap());
        }
    });
}
