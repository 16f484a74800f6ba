//! Small dense linear algebra for the regression experiments (row-major `Vec<Vec<f64>>`).
use crate::rng::Rng;

pub type Mat = Vec<Vec<f64>>;

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn mat_vec(m: &Mat, v: &[f64]) -> Vec<f64> {
    m.iter().map(|row| dot(row, v)).collect()
}

/// `mᵀ v`.
pub fn mat_t_vec(m: &Mat, v: &[f64]) -> Vec<f64> {
    let cols = m.first().map_or(0, |r| r.len());
    let mut out = vec![0.0; cols];
    for (row, &vi) in m.iter().zip(v) {
        for (o, &r) in out.iter_mut().zip(row) {
            *o += r * vi;
        }
    }
    out
}

pub fn transpose(m: &Mat) -> Mat {
    let cols = m.first().map_or(0, |r| r.len());
    (0..cols)
        .map(|j| m.iter().map(|r| r[j]).collect())
        .collect()
}

pub fn mat_mul(a: &Mat, b: &Mat) -> Mat {
    let bt = transpose(b);
    a.iter()
        .map(|row| bt.iter().map(|col| dot(row, col)).collect())
        .collect()
}

pub fn trace(m: &Mat) -> f64 {
    (0..m.len()).map(|i| m[i][i]).sum()
}

/// A random orthogonal `d × d` matrix: Gram–Schmidt (twice, for accuracy) on Gaussian columns.
pub fn random_orthogonal(d: usize, rng: &mut Rng) -> Mat {
    let mut cols: Vec<Vec<f64>> = Vec::with_capacity(d);
    while cols.len() < d {
        let mut v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        for _ in 0..2 {
            for c in &cols {
                let p = dot(&v, c);
                for (vi, ci) in v.iter_mut().zip(c) {
                    *vi -= p * ci;
                }
            }
        }
        let n = dot(&v, &v).sqrt();
        if n > 1e-8 {
            cols.push(v.into_iter().map(|x| x / n).collect());
        }
    }
    transpose(&cols)
}

/// Eigenvalues of a symmetric matrix (cyclic Jacobi), ascending.
pub fn sym_eigenvalues(m: &Mat) -> Vec<f64> {
    sym_eigen(m).into_iter().map(|(v, _)| v).collect()
}

/// Eigenpairs of a symmetric matrix (cyclic Jacobi, the rotations accumulated), ascending by
/// eigenvalue; each eigenvector has unit norm.
pub fn sym_eigen(m: &Mat) -> Vec<(f64, Vec<f64>)> {
    let n = m.len();
    let mut a = m.clone();
    // V starts as the identity; V ← V·J with every rotation, so A = V·diag·Vᵀ at the end.
    let mut v: Mat = (0..n)
        .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        if off < 1e-24 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut().chain(v.iter_mut()) {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - s * akq;
                    row[q] = s * akp + c * akq;
                }
                let (rp, rq) = (a[p].clone(), a[q].clone());
                for (k, (apk, aqk)) in rp.into_iter().zip(rq).enumerate() {
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
            }
        }
    }
    let mut pairs: Vec<(f64, Vec<f64>)> = (0..n)
        .map(|k| (a[k][k], v.iter().map(|row| row[k]).collect()))
        .collect();
    pairs.sort_by(|x, y| x.0.total_cmp(&y.0));
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_orthogonal_is_orthogonal() {
        let q = random_orthogonal(6, &mut Rng::new(5));
        let qtq = mat_mul(&transpose(&q), &q);
        for (i, row) in qtq.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-12, "({i},{j}) = {v}");
            }
        }
    }

    #[test]
    fn jacobi_recovers_a_known_spectrum() {
        let q = random_orthogonal(5, &mut Rng::new(9));
        let lam = [0.5, 0.75, 1.0, 2.0, 3.5];
        let d: Mat = (0..5)
            .map(|i| (0..5).map(|j| if i == j { lam[i] } else { 0.0 }).collect())
            .collect();
        let m = mat_mul(&mat_mul(&q, &d), &transpose(&q));
        let ev = sym_eigenvalues(&m);
        for (a, b) in ev.iter().zip(lam) {
            assert!((a - b).abs() < 1e-10, "{ev:?}");
        }
        assert!((trace(&m) - lam.iter().sum::<f64>()).abs() < 1e-12);
    }

    #[test]
    fn jacobi_eigenvectors_diagonalise() {
        let q = random_orthogonal(4, &mut Rng::new(3));
        let lam = [-1.0, 0.25, 2.0, 5.0];
        let d: Mat = (0..4)
            .map(|i| (0..4).map(|j| if i == j { lam[i] } else { 0.0 }).collect())
            .collect();
        let m = mat_mul(&mat_mul(&q, &d), &transpose(&q));
        for (k, (value, vec)) in sym_eigen(&m).into_iter().enumerate() {
            assert!((value - lam[k]).abs() < 1e-10);
            assert!((dot(&vec, &vec) - 1.0).abs() < 1e-10);
            let mv = mat_vec(&m, &vec);
            for (a, b) in mv.iter().zip(&vec) {
                assert!((a - value * b).abs() < 1e-9, "M v ≠ λ v for λ = {value}");
            }
        }
    }

    #[test]
    fn products_agree() {
        let m: Mat = vec![vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 6.0]];
        assert_eq!(mat_vec(&m, &[1.0, 1.0]), vec![3.0, 7.0, 11.0]);
        assert_eq!(mat_t_vec(&m, &[1.0, 0.0, 1.0]), vec![6.0, 8.0]);
    }
}
