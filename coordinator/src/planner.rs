//! Sharding: turns a source listing into shards.
//!
//! Objects are taken in key order. Small objects are grouped until a shard reaches `shard_bytes`;
//! an object larger than `shard_bytes` that can be split (uncompressed NDJSON or CSV) is cut into
//! byte ranges of `shard_bytes` (the worker aligns them to line boundaries), so one 10 GB file is
//! worked on by many workers. Shards are consecutive, disjoint stretches of the (key, offset)
//! order, so a shard's index orders its rows against every other shard's.

use protocol::{ByteRange, ObjectRef, ShardDescriptor, ShardInput};

/// Whether an object may be split into byte ranges.
pub type Splittable<'a> = &'a dyn Fn(&ObjectRef) -> bool;

pub fn plan_shards(
    objects: &[ObjectRef],
    shard_bytes: u64,
    splittable: Splittable<'_>,
) -> Vec<ShardDescriptor> {
    let shard_bytes = shard_bytes.max(1);
    let mut shards: Vec<ShardDescriptor> = Vec::new();
    let mut group: Vec<ShardInput> = Vec::new();
    let mut group_bytes = 0u64;
    let push = |shards: &mut Vec<ShardDescriptor>, inputs: Vec<ShardInput>| {
        let index = shards.len() as u32;
        shards.push(ShardDescriptor {
            shard_id: format!("s{index:05}"),
            index,
            extract: None,
            inputs,
        });
    };
    let mut sorted: Vec<&ObjectRef> = objects.iter().collect();
    sorted.sort();
    for o in sorted {
        if o.size > shard_bytes && splittable(o) {
            if !group.is_empty() {
                push(&mut shards, std::mem::take(&mut group));
                group_bytes = 0;
            }
            let mut start = 0;
            while start < o.size {
                let end = (start + shard_bytes).min(o.size);
                push(
                    &mut shards,
                    vec![ShardInput {
                        object: o.clone(),
                        range: Some(ByteRange { start, end }),
                    }],
                );
                start = end;
            }
            continue;
        }
        if !group.is_empty() && group_bytes + o.size > shard_bytes {
            push(&mut shards, std::mem::take(&mut group));
            group_bytes = 0;
        }
        group_bytes += o.size;
        group.push(ShardInput {
            object: o.clone(),
            range: None,
        });
    }
    if !group.is_empty() {
        push(&mut shards, group);
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::object_store::{LocalStore, ObjectStore};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn obj(key: &str, size: u64) -> ObjectRef {
        ObjectRef {
            key: key.into(),
            size,
        }
    }

    #[test]
    fn groups_small_files_and_splits_large_ones() {
        let objs = vec![
            obj("c", 10),
            obj("a", 3),
            obj("b", 3),
            obj("big", 25),
            obj("z", 1),
        ];
        let shards = plan_shards(&objs, 10, &|o: &ObjectRef| o.key == "big");
        type Layout = Vec<Vec<(String, Option<(u64, u64)>)>>;
        let desc: Layout = shards
            .iter()
            .map(|s| {
                s.inputs
                    .iter()
                    .map(|i| (i.object.key.clone(), i.range.map(|r| (r.start, r.end))))
                    .collect()
            })
            .collect();
        assert_eq!(
            desc,
            vec![
                vec![("a".into(), None), ("b".into(), None)],
                vec![("big".into(), Some((0, 10)))],
                vec![("big".into(), Some((10, 20)))],
                vec![("big".into(), Some((20, 25)))],
                vec![("c".into(), None)],
                vec![("z".into(), None)],
            ]
        );
        assert_eq!(shards[3].shard_id, "s00003");
        // shard positions are increasing: they order rows across shards
        let pos: Vec<_> = shards.iter().map(|s| s.source_position()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn unsplittable_large_files_stay_whole() {
        let shards = plan_shards(&[obj("a.gz", 100)], 10, &|_: &ObjectRef| false);
        assert_eq!(shards.len(), 1);
        assert_eq!(shards[0].inputs[0].range, None);
    }

    /// Reads the lines of every shard with the worker's reader; returns (offset, text) pairs.
    fn read_all(
        store: &Arc<dyn ObjectStore>,
        shards: &[ShardDescriptor],
        max_line: u64,
    ) -> (Vec<(u64, Vec<u8>)>, usize) {
        let mut lines = Vec::new();
        let mut oversized = 0;
        for s in shards {
            for input in &s.inputs {
                worker::engine::read_lines(
                    &**store,
                    input,
                    worker::engine::LineReading {
                        compression: pipeline::Compression::None,
                        max_line,
                        header: None,
                        skip_header: false,
                    },
                    &Default::default(),
                    &mut |c| {
                        for (i, (a, b)) in c.spans.iter().enumerate() {
                            lines.push((c.offsets[i], c.buf[*a..*b].to_vec()));
                        }
                        oversized += c.oversized.len();
                        true
                    },
                )
                .unwrap();
            }
        }
        (lines, oversized)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every line of a file is read exactly once, whatever the shard size.
        #[test]
        fn byte_range_sharding_reads_every_line_once(
            lines in proptest::collection::vec(proptest::collection::vec(b'a'..=b'z', 0..40), 0..60),
            final_newline in any::<bool>(),
            shard_bytes in 1u64..200,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut content = Vec::new();
            let mut want = Vec::new();
            for (i, l) in lines.iter().enumerate() {
                want.push((content.len() as u64, l.clone()));
                content.extend_from_slice(l);
                if i + 1 < lines.len() || final_newline {
                    content.push(b'\n');
                }
            }
            // A file ending without a newline: its last line still counts (if not empty).
            if !final_newline && lines.last().is_some_and(|l| l.is_empty()) {
                want.pop();
            }
            std::fs::write(dir.path().join("f.ndjson"), &content).unwrap();
            let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
            let objects = vec![obj("f.ndjson", content.len() as u64)];
            let shards = plan_shards(&objects, shard_bytes, &|_: &ObjectRef| true);
            let (got, _) = read_all(&store, &shards, 1 << 20);
            prop_assert_eq!(got, want);
        }

        /// Over-long lines are reported once each (never held whole), the others read once.
        #[test]
        fn over_long_lines_are_counted_once(
            lens in proptest::collection::vec(0usize..3000, 1..30),
            shard_bytes in 50u64..5000,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut content = Vec::new();
            for l in &lens {
                content.extend(std::iter::repeat_n(b'x', *l));
                content.push(b'\n');
            }
            std::fs::write(dir.path().join("f"), &content).unwrap();
            let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).unwrap());
            let shards = plan_shards(&[obj("f", content.len() as u64)], shard_bytes, &|_: &ObjectRef| true);
            let (got, over) = read_all(&store, &shards, 1000);
            prop_assert_eq!(got.len() + over, lens.len());
            prop_assert_eq!(over, lens.iter().filter(|l| **l > 1000).count());
        }
    }
}
