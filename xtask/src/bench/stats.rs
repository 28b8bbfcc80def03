//! Summaries of repeated measurements: median and range, and the per-round ratio of a
//! configuration to its baseline measured in the same round (A B A B ...), whose spread says
//! how much the machine drifted between rounds.

/// Values of one measure over the rounds.
#[derive(Clone, Debug, Default)]
pub struct Series(pub Vec<f64>);

impl Series {
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut values = self.0.clone();
        values.sort_by(f64::total_cmp);
        values
    }

    pub fn median(&self) -> Option<f64> {
        let values = self.sorted();
        let n = values.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(values[n / 2]),
            _ => Some(f64::midpoint(values[n / 2 - 1], values[n / 2])),
        }
    }

    pub fn min(&self) -> Option<f64> {
        self.sorted().first().copied()
    }

    pub fn max(&self) -> Option<f64> {
        self.sorted().last().copied()
    }

    /// Per-round ratios `self[i] / baseline[i]` (rounds without both values are skipped).
    pub fn ratio_to(&self, baseline: &Self) -> Self {
        Self(
            self.0
                .iter()
                .zip(&baseline.0)
                .filter(|(_, b)| **b != 0.0)
                .map(|(a, b)| a / b)
                .collect(),
        )
    }

    /// Per-round differences `self[i] - baseline[i]`.
    pub fn minus(&self, baseline: &Self) -> Self {
        Self(self.0.iter().zip(&baseline.0).map(|(a, b)| a - b).collect())
    }

    /// "median (min–max)" with `digits` decimals, or "–" when empty.
    pub fn describe(&self, digits: usize) -> String {
        match (self.median(), self.min(), self.max()) {
            (Some(median), Some(min), Some(max)) => {
                format!("{median:.digits$} ({min:.digits$}–{max:.digits$})")
            }
            _ => "–".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_range_and_paired_ratio() {
        let a = Series(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!(a.median(), Some(2.5));
        assert_eq!((a.min(), a.max()), (Some(1.0), Some(10.0)));
        let b = Series(vec![1.5, 0.5, 0.0, 5.0]);
        assert_eq!(a.ratio_to(&b).0, vec![2.0, 2.0, 2.0]);
        assert_eq!(a.minus(&b).0, vec![1.5, 0.5, 2.0, 5.0]);
        assert_eq!(Series::default().describe(1), "–");
        assert_eq!(Series(vec![1.0]).describe(1), "1.0 (1.0–1.0)");
    }
}
