//! Shamir secret sharing over GF(2^8), as sops uses it to split the data key
//! across key groups.
//!
//! Each share is the secret's length plus one byte: for every secret byte, the
//! value of a random polynomial at the share's x coordinate, which is stored in
//! the share's last byte. The field is GF(2^8) with the AES polynomial
//! x^8 + x^4 + x^3 + x + 1. Recombining is Lagrange interpolation at x = 0.

use zeroize::Zeroizing;

/// Why shares could not be combined.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShamirError {
    /// Fewer than two shares.
    #[error("at least two shares are needed, got {0}")]
    TooFew(usize),
    /// Shares of different lengths, or too short.
    #[error("the shares have inconsistent lengths")]
    BadLength,
    /// Two shares with the same x coordinate.
    #[error("two shares have the same x coordinate")]
    Duplicate,
}

fn mul(a: u8, b: u8) -> u8 {
    let (mut a, mut b, mut acc) = (a, b, 0u8);
    while b != 0 {
        if b & 1 != 0 {
            acc ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= 0x1b;
        }
        b >>= 1;
    }
    acc
}

/// Multiplicative inverse: a^254 = a^-1 in GF(2^8).
fn inv(a: u8) -> u8 {
    let mut result = 1u8;
    let mut base = a;
    let mut e = 254u8;
    while e != 0 {
        if e & 1 != 0 {
            result = mul(result, base);
        }
        base = mul(base, base);
        e >>= 1;
    }
    result
}

/// Recombines the secret from `shares` (any subset of at least the threshold).
pub fn combine(shares: &[Zeroizing<Vec<u8>>]) -> Result<Zeroizing<Vec<u8>>, ShamirError> {
    if shares.len() < 2 {
        return Err(ShamirError::TooFew(shares.len()));
    }
    let len = shares[0].len();
    if len < 2 || shares.iter().any(|s| s.len() != len) {
        return Err(ShamirError::BadLength);
    }
    let xs: Vec<u8> = shares.iter().map(|s| s[len - 1]).collect();
    for (i, x) in xs.iter().enumerate() {
        if xs[..i].contains(x) {
            return Err(ShamirError::Duplicate);
        }
    }
    // Lagrange basis at 0: l_i = prod_{j != i} x_j / (x_j - x_i); subtraction is xor.
    let basis: Vec<u8> = (0..xs.len())
        .map(|i| {
            xs.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .fold(1u8, |acc, (_, &xj)| mul(acc, mul(xj, inv(xj ^ xs[i]))))
        })
        .collect();
    let mut secret = Zeroizing::new(vec![0u8; len - 1]);
    for (byte, out) in secret.iter_mut().enumerate() {
        *out = shares
            .iter()
            .zip(&basis)
            .fold(0u8, |acc, (s, &l)| acc ^ mul(s[byte], l));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Evaluates a polynomial with the given coefficients (constant first) at x.
    fn eval(coeffs: &[u8], x: u8) -> u8 {
        coeffs.iter().rev().fold(0u8, |acc, &c| mul(acc, x) ^ c)
    }

    fn share(secret: &[u8], slope: &[u8], x: u8) -> Zeroizing<Vec<u8>> {
        let mut s: Vec<u8> = secret
            .iter()
            .zip(slope)
            .map(|(&c, &m)| eval(&[c, m], x))
            .collect();
        s.push(x);
        Zeroizing::new(s)
    }

    #[test]
    fn field_inverse_is_inverse() {
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "a = {a}");
        }
        // The AES field: 0x53 * 0xCA = 1 (FIPS-197 example).
        assert_eq!(mul(0x53, 0xca), 1);
    }

    #[test]
    fn any_two_of_three_shares_recombine() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let slope = b"zyxwvutsrqponmlkjihgfedcba987654";
        let shares: Vec<_> = [11u8, 42, 200].iter().map(|&x| share(secret, slope, x)).collect();
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            let got = combine(&[shares[a].clone(), shares[b].clone()]).unwrap();
            assert_eq!(got.as_slice(), secret);
        }
    }

    #[test]
    fn one_share_is_refused() {
        assert_eq!(
            combine(&[Zeroizing::new(vec![1, 2, 3])]),
            Err(ShamirError::TooFew(1))
        );
    }
}
