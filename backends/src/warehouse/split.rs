//! A Redshift load batch that needs more statements than one Data API call takes (40) is
//! loaded in parts: consecutive runs of its file groups, each its own transaction with its own
//! ledger id (`BATCH.p1`, `BATCH.p2`, …), the last also recording the batch's own id. A part in
//! the ledger changes nothing when the batch is retried, and the merge keeps the earliest source
//! position whichever part a row came in, so the table is the same as one transaction would
//! make it.

/// One file group of a batch: its schema (an index into the batch's distinct shapes) and its
/// files (indexes into the batch's files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub shape: usize,
    pub files: Vec<usize>,
}

/// Statements a part takes: the plan's own (`fixed`: before and after the data, and the extra
/// ledger insert of the last part), two per distinct schema (its file-shaped table) and three
/// per group (COPY, move into staging, empty the file-shaped table).
pub fn statements(fixed: usize, groups: &[&Group]) -> usize {
    let mut shapes: Vec<usize> = groups.iter().map(|g| g.shape).collect();
    shapes.sort_unstable();
    shapes.dedup();
    fixed + 2 * shapes.len() + 3 * groups.len()
}

/// Consecutive groups packed into parts of at most `limit` statements each; `None` when one
/// group alone does not fit.
pub fn parts(groups: &[Group], fixed: usize, limit: usize) -> Option<Vec<Vec<usize>>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for (i, _) in groups.iter().enumerate() {
        let mut with: Vec<&Group> = current.iter().map(|&j| &groups[j]).collect();
        with.push(&groups[i]);
        if statements(fixed, &with) <= limit {
            current.push(i);
            continue;
        }
        if current.is_empty() {
            return None;
        }
        out.push(std::mem::take(&mut current));
        if statements(fixed, &[&groups[i]]) > limit {
            return None;
        }
        current.push(i);
    }
    if !current.is_empty() {
        out.push(current);
    }
    Some(out)
}

/// The ledger id of part `n` (from 1) of a batch.
pub fn part_id(batch_id: &str, n: usize) -> String {
    format!("{batch_id}.p{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(shape: usize) -> Group {
        Group {
            shape,
            files: vec![0],
        }
    }

    #[test]
    fn groups_are_packed_into_parts_that_fit_the_statement_limit() {
        // 10 fixed statements: one schema and 9 groups make 10 + 2 + 27 = 39.
        let nine: Vec<Group> = (0..9).map(|_| g(0)).collect();
        assert_eq!(statements(10, &nine.iter().collect::<Vec<_>>()), 39);
        assert_eq!(
            parts(&nine, 10, 40).unwrap(),
            vec![(0..9).collect::<Vec<_>>()]
        );
        let twenty: Vec<Group> = (0..20).map(|_| g(0)).collect();
        let p = parts(&twenty, 10, 40).unwrap();
        assert_eq!(p.iter().map(Vec::len).collect::<Vec<_>>(), vec![9, 9, 2]);
        assert_eq!(
            p.concat(),
            (0..20).collect::<Vec<_>>(),
            "every group once, in order"
        );
        // A second schema costs its file-shaped table in the part it appears in.
        let mixed: Vec<Group> = (0..9).map(|i| g(i % 2)).collect();
        let p = parts(&mixed, 10, 40).unwrap();
        assert_eq!(p.iter().map(Vec::len).collect::<Vec<_>>(), vec![8, 1]);
        assert_eq!(parts(&[g(0)], 38, 40), None, "one group that cannot fit");
        assert_eq!(part_id("r-t-b0003", 2), "r-t-b0003.p2");
    }
}
