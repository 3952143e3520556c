//! Go's number formatting, reproduced where sops's bytes depend on it.
//!
//! sops is written in Go, and three of its outputs spell floats the way Go's
//! `strconv` does: the MAC hashes `FormatFloat(f, 'f', -1, 64)`, YAML output
//! uses `'g'`, JSON output uses `encoding/json`'s rule, and the dotenv and ini
//! stores use `'G'`. All of them start from the shortest decimal digits that
//! round-trip, which Rust's `{:e}` formatting also produces, so only the layout
//! differs and is rebuilt here.

/// Shortest round-trip digits of a finite, non-zero `f`, and the position of
/// the decimal point relative to them (Go's `decimal.dp`): `f = 0.DIGITS × 10^dp`.
fn shortest_digits(f: f64) -> (String, i32) {
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always has an exponent");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let digits = round_half_even(f.abs(), digits, exp);
    (digits, exp + 1)
}

/// When the value lies exactly halfway between two shortest spellings that
/// both round-trip, Go picks the one ending in an even digit; Rust's
/// formatter may pick the other. Detect that tie from the exact decimal
/// expansion (an f64 has at most 767 significant digits) and follow Go.
fn round_half_even(f: f64, digits: String, exp: i32) -> String {
    let last = digits.as_bytes()[digits.len() - 1] - b'0';
    if last.is_multiple_of(2) || digits.len() < 2 {
        return digits;
    }
    let exact = format!("{:.800e}", f);
    let (mantissa, exact_exp) = exact.split_once('e').expect("exponent");
    if exact_exp.parse::<i32>() != Ok(exp) {
        return digits;
    }
    let exact_digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    let n = digits.len();
    for neighbour in [-1i32, 1] {
        let Some(candidate) = step_last_digit(&digits, neighbour) else {
            continue;
        };
        // Halfway between `digits` and `candidate`: the lower one, then 5, then zeros.
        let lower = if neighbour < 0 { &candidate } else { &digits };
        let halfway = exact_digits.len() > n
            && exact_digits[..n] == *lower.as_bytes()
            && exact_digits[n] == b'5'
            && exact_digits[n + 1..].iter().all(|&d| d == b'0');
        let spelled = format!("{}.{}e{exp}", &candidate[..1], &candidate[1..]);
        if halfway && spelled.parse::<f64>() == Ok(f) {
            return candidate;
        }
    }
    digits
}

/// `digits` with its last digit moved by ±1, if that needs no carry.
fn step_last_digit(digits: &str, by: i32) -> Option<String> {
    let mut bytes = digits.as_bytes().to_vec();
    let last = bytes.last_mut()?;
    let v = (*last - b'0') as i32 + by;
    if !(0..=9).contains(&v) {
        return None;
    }
    *last = b'0' + v as u8;
    String::from_utf8(bytes).ok()
}

fn special(f: f64) -> Option<&'static str> {
    if f.is_nan() {
        Some("NaN")
    } else if f == f64::INFINITY {
        Some("+Inf")
    } else if f == f64::NEG_INFINITY {
        Some("-Inf")
    } else {
        None
    }
}

fn sign(f: f64) -> &'static str {
    if f.is_sign_negative() { "-" } else { "" }
}

fn layout_f(digits: &str, dp: i32) -> String {
    let n = digits.len() as i32;
    if dp <= 0 {
        format!("0.{}{digits}", "0".repeat((-dp) as usize))
    } else if dp >= n {
        format!("{digits}{}", "0".repeat((dp - n) as usize))
    } else {
        format!("{}.{}", &digits[..dp as usize], &digits[dp as usize..])
    }
}

fn layout_e(digits: &str, dp: i32, e: char) -> String {
    let exp = dp - 1;
    let mut out = digits[..1].to_owned();
    if digits.len() > 1 {
        out.push('.');
        out.push_str(&digits[1..]);
    }
    out.push(e);
    out.push(if exp < 0 { '-' } else { '+' });
    let abs = exp.unsigned_abs();
    if abs < 10 {
        out.push('0');
    }
    out.push_str(&abs.to_string());
    out
}

/// `strconv.FormatFloat(f, 'f', -1, 64)`: what sops hashes into the MAC and encrypts.
pub fn format_f(f: f64) -> String {
    if let Some(s) = special(f) {
        return s.to_owned();
    }
    if f == 0.0 {
        return format!("{}0", sign(f));
    }
    let (digits, dp) = shortest_digits(f);
    format!("{}{}", sign(f), layout_f(&digits, dp))
}

/// `strconv.FormatFloat(f, 'g', -1, 64)`: how go-yaml v3 writes a float.
pub fn format_g(f: f64) -> String {
    go_g(f, 'e')
}

/// `strconv.FormatFloat(f, 'G', -1, 64)`: part of how the dotenv and ini stores write floats.
pub fn format_upper_g(f: f64) -> String {
    go_g(f, 'E')
}

/// Go's `%g` rule for the shortest form: exponent form when the decimal
/// exponent is below -4 or at least 6.
fn go_g(f: f64, e: char) -> String {
    if let Some(s) = special(f) {
        return s.to_owned();
    }
    if f == 0.0 {
        return format!("{}0", sign(f));
    }
    let (digits, dp) = shortest_digits(f);
    // For the shortest form strconv decides with a precision of 6.
    let eprec = 6;
    let exp = dp - 1;
    let body = if exp < -4 || exp >= eprec {
        layout_e(&digits, dp, e)
    } else {
        layout_f(&digits, dp)
    };
    format!("{}{body}", sign(f))
}

/// `encoding/json`'s float encoding: `'f'`, or `'e'` with a trimmed exponent
/// outside `[1e-6, 1e21)`.
pub fn format_json(f: f64) -> String {
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let (digits, dp) = shortest_digits(f);
        let mut s = format!("{}{}", sign(f), layout_e(&digits, dp, 'e'));
        // json: "clean up e-09 to e-9"
        let n = s.len();
        if s.as_bytes()[n - 4] == b'e' && s.as_bytes()[n - 3] == b'-' && s.as_bytes()[n - 2] == b'0' {
            s.remove(n - 2);
        }
        s
    } else {
        format_f(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected strings are what Go 1.22's strconv prints for the same inputs.
    #[test]
    fn f_format_matches_go() {
        assert_eq!(format_f(1.5), "1.5");
        assert_eq!(format_f(1.0), "1");
        assert_eq!(format_f(1e6), "1000000");
        assert_eq!(format_f(0.000001), "0.000001");
        assert_eq!(format_f(1e21), "1000000000000000000000");
        assert_eq!(format_f(-2.25), "-2.25");
        assert_eq!(format_f(0.0), "0");
    }

    #[test]
    fn g_format_matches_go() {
        assert_eq!(format_g(1.5), "1.5");
        assert_eq!(format_g(1.0), "1");
        assert_eq!(format_g(1e6), "1e+06");
        assert_eq!(format_g(123456.0), "123456");
        assert_eq!(format_g(1234567.0), "1.234567e+06");
        assert_eq!(format_g(0.0001), "0.0001");
        assert_eq!(format_g(0.00001), "1e-05");
        assert_eq!(format_upper_g(1e6), "1E+06");
    }

    #[test]
    fn halfway_ties_round_to_even_like_go() {
        // 1249965610750183.25 lies exactly between ...832 and ...833 (17 digits);
        // Go prints the even one.
        let tie: f64 = "1249965610750183.25".parse().unwrap();
        assert_eq!(format_g(tie), "1.2499656107501832e+15");
        assert_eq!(format_f(tie), "1249965610750183.2");
    }

    #[test]
    fn json_format_matches_go() {
        assert_eq!(format_json(1e6), "1000000");
        assert_eq!(format_json(1e21), "1e+21");
        assert_eq!(format_json(1e-7), "1e-7");
        assert_eq!(format_json(3.25), "3.25");
    }
}
