//! `OneOrMany`: a list that is almost always one element long, kept inline when it is.
//!
//! An endpoint has one address and a DNS name the records of one service; a `Vec` would put
//! that one element in a block of its own (and leave room for four on the first push).
//! Reads as a slice; built from a `Vec`.

use std::fmt;
use std::ops::Deref;

#[derive(Clone, PartialEq, Eq)]
pub enum OneOrMany<T> {
    One(T),
    /// None, or more than one.
    Many(Box<[T]>),
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::Many(Box::default())
    }
}

impl<T> Deref for OneOrMany<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            OneOrMany::One(x) => std::slice::from_ref(x),
            OneOrMany::Many(xs) => xs,
        }
    }
}

impl<'a, T> IntoIterator for &'a OneOrMany<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T> From<Vec<T>> for OneOrMany<T> {
    fn from(mut v: Vec<T>) -> Self {
        match (v.len(), v.pop()) {
            (1, Some(x)) => OneOrMany::One(x),
            (_, last) => {
                v.extend(last);
                OneOrMany::Many(v.into())
            }
        }
    }
}

impl<T> From<T> for OneOrMany<T> {
    fn from(x: T) -> Self {
        OneOrMany::One(x)
    }
}

impl<T: fmt::Debug> fmt::Debug for OneOrMany<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_inline_else_boxed_and_reads_as_the_vec() {
        for v in [vec![], vec![1], vec![1, 2], vec![1, 2, 3]] {
            let few: OneOrMany<i32> = v.clone().into();
            assert_eq!(&*few, &v[..]);
            assert_eq!(matches!(few, OneOrMany::One(_)), v.len() == 1);
            assert_eq!(format!("{few:?}"), format!("{v:?}"));
        }
        assert_eq!(&*OneOrMany::<u8>::default(), &[] as &[u8]);
        assert_eq!(&*OneOrMany::One(7), &[7]);
    }
}
