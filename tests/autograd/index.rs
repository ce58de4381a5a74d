//! View transforms, concat / split and the index lookups (repeated indices included).

use infinity::autograd::{Var, index};
use infinity::runtime::Tensor;
use proptest::prelude::*;

use crate::support::{check, config, layout, randn, shape};

/// A shape (rank 1..=4) and a permutation of its dimensions.
fn shape_perm() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    shape(4, 4).prop_flat_map(|s| {
        let identity: Vec<usize> = (0..s.len()).collect();
        (Just(s), Just(identity).prop_shuffle())
    })
}

proptest! {
    #![proptest_config(config())]

    /// A chain of views and reshapes; the projection then weights every output element
    /// differently, so a misplaced gradient element shows.
    #[test]
    fn view_transforms((s, perm) in shape_perm(), seed in any::<u64>(), l in any::<u8>(), which in 0usize..6) {
        let x = layout(&randn(&s, seed, 1.0), l);
        let last = s.len() - 1;
        check(&[x], |v| {
            let x = &v[0];
            match which {
                0 => x.permute(&perm)?.reshape(&[s.iter().product()]),
                1 => x.transpose(0, last)?.contiguous(),
                2 => x.narrow(last, s[last] / 3, s[last] - s[last] / 3)?.unsqueeze(0),
                3 => {
                    // (s0, 1, s1, ...) → (2, s0, 3, s1, ...): a new leading dim and an inner one.
                    let shape: Vec<usize> = [2, s[0], 3].iter().chain(&s[1..]).copied().collect();
                    x.unsqueeze(1)?.broadcast_to(&shape)
                }
                4 => x.reshape(&[s.iter().product(), 1])?.squeeze(1),
                _ => {
                    // The same input through two paths: gradients must add up.
                    let a = x.permute(&perm)?;
                    let b = x.narrow(0, 0, 1)?.permute(&perm)?;
                    infinity::autograd::elementwise::mul(&a, &b)
                }
            }
        });
    }

    #[test]
    fn concat_and_split(
        (s, dim) in shape(3, 4).prop_flat_map(|s| { let r = s.len(); (Just(s), 0..r) }),
        extra in 1usize..4,
        seed in any::<u64>(),
        l in any::<u8>(),
    ) {
        let mut s2 = s.clone();
        s2[dim] = extra;
        let (a, b) = (layout(&randn(&s, seed, 1.0), l), randn(&s2, seed ^ 1, 1.0));
        check(&[a, b], |v| {
            let joined = index::concat(&[&v[0], &v[1]], dim)?;
            let total = joined.shape()[dim];
            // Split at other points than the concat boundary, and put the pieces back in reverse.
            let pieces = index::split(&joined, &[total / 2, total - total / 2], dim)?;
            index::concat(&[&pieces[1], &pieces[0]], dim)
        });
    }

    #[test]
    fn index_select_with_repeats(
        (s, dim) in shape(3, 4).prop_flat_map(|s| { let r = s.len(); (Just(s), 0..r) }),
        picks in prop::collection::vec(any::<u16>(), 1..7),
        seed in any::<u64>(),
        l in any::<u8>(),
    ) {
        let ids: Vec<i64> = picks.iter().map(|&p| i64::from(p) % s[dim] as i64).collect();
        let ids = Tensor::from_vec(ids, &[picks.len()]).unwrap();
        check(&[layout(&randn(&s, seed, 1.0), l)], |v| index::index_select(&v[0], dim, &ids));
    }

    #[test]
    fn embedding_with_repeats(vocab in 1usize..6, width in 1usize..5, picks in prop::collection::vec(any::<u16>(), 1..9), seed in any::<u64>()) {
        let ids: Vec<i32> = picks.iter().map(|&p| i32::from(p) % vocab as i32).collect();
        // Ids shaped (2, n/2) when even: the lookup keeps the ids' shape.
        let shape = if ids.len().is_multiple_of(2) { vec![2, ids.len() / 2] } else { vec![ids.len()] };
        let ids = Tensor::from_vec(ids, &shape).unwrap();
        check(&[randn(&[vocab, width], seed, 1.0)], |v: &[Var]| index::embedding(&v[0], &ids));
    }
}
