//! `loadtest run --processes`: sources of the small preset driven as a coordinator process and
//! two worker processes against moto (S3, SQS) and PostgreSQL, reported like the embedded run —
//! and landing the same rows as it.

use std::time::Duration;

use backends::testkit;
use tributary_tests::fleet::worker_bin;

#[test]
fn the_small_preset_runs_as_processes_against_moto_and_postgres() {
    let (Some(endpoint), Some(postgres)) = (testkit::aws_endpoint(), testkit::postgres()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let specs = loadtest::preset::sources(45_000);
    // One source of each format (NDJSON, CSV, JSON array, Parquet), plain, gzip and zstd.
    let chosen: Vec<_> = [0, 5, 10, 3].iter().map(|&i| specs[i].clone()).collect();
    loadtest::preset::write(dir.path(), &chosen, 5_000).unwrap();
    let o = loadtest::processes::Options {
        dir: dir.path().to_path_buf(),
        work: dir.path().join("fleet"),
        endpoint,
        postgres,
        bin_dir: worker_bin().parent().unwrap().to_path_buf(),
        workers: 2,
        worker_threads: 1,
        only: None,
        timeout: Duration::from_secs(240),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(loadtest::processes::run(&o)).unwrap();
    assert_eq!(r.mode, "processes");
    assert_eq!(r.pipelines, 4);
    let want: u64 = chosen.iter().map(|s| s.rows).sum();
    assert_eq!(r.rows_in, want, "{r:#?}");
    assert!(r.results.iter().all(|p| p.status == "completed"), "{r:#?}");
    assert!(r.load_batches >= 4, "{r:#?}");
    assert!(
        r.parquet_files > 0 && r.parquet_size_quantiles[3] > 0,
        "{r:#?}"
    );
    for stage in ["read", "parse", "transform", "encode", "upload", "load"] {
        assert!(
            r.stage_seconds.contains_key(stage),
            "{stage}: {:?}",
            r.stage_seconds
        );
    }
    assert_eq!(r.peak_rss_mb_per_worker.len(), 2);
    assert!(r.peak_rss_mb_per_worker.iter().all(|m| *m > 1.0), "{r:#?}");
    assert!(r.task_latency_p99 >= r.task_latency_p50 && r.task_latency_p50 > 0.0);
    assert!(r.cpu_seconds > 0.0 && r.estimated_cost_per_million_rows_usd > 0.0);

    // The embedded run of the same sources lands the same rows, pipeline by pipeline.
    let embedded = rt
        .block_on(loadtest::drive::run(
            dir.path(),
            &dir.path().join("data"),
            2,
            None,
        ))
        .unwrap();
    let rows = |rep: &loadtest::drive::Report| -> Vec<(String, u64, u64)> {
        let mut v: Vec<_> = rep
            .results
            .iter()
            .map(|p| (p.pipeline.clone(), p.rows_out, p.rows_rejected))
            .collect();
        v.sort();
        v
    };
    assert_eq!(rows(&r), rows(&embedded));
}
