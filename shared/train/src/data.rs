//! Reading tabular data: labelled training sets and unlabelled records to encrypt.

use fhe_batch_core::model::prefix::{ClientPrefix, TextColumn};
use rand::{Rng, SeedableRng};
use std::path::Path;

/// Why a data file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: no column named {column:?} (columns: {available})")]
    MissingColumn {
        path: String,
        column: String,
        available: String,
    },
    #[error("{path}, line {line}: column {column:?} holds {value:?}, which is not a number")]
    NotANumber {
        path: String,
        line: u64,
        column: String,
        value: String,
    },
    #[error("{path}, line {line}: column {column:?}: {reason}")]
    Category {
        path: String,
        line: u64,
        column: String,
        reason: String,
    },
    #[error("{path}, line {line}: expected {expected} fields, found {found}")]
    Ragged {
        path: String,
        line: u64,
        expected: usize,
        found: usize,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    /// Records with missing values (empty cells, NaN, NA): every one is listed, none is
    /// silently replaced.
    #[error(
        "{path}: {count} records have missing values (empty, NaN or NA), which the model cannot take (it has no imputer): {lines}. Impute or drop them before encrypting"
    )]
    Missing {
        path: String,
        count: usize,
        /// Every line with a missing value, with the columns of the first ones.
        lines: String,
    },
}

/// Whether a cell means "no value" (empty, NaN, NA, null), as pandas writes and reads them.
fn is_missing(value: &str) -> bool {
    let v = value.trim();
    v.is_empty()
        || ["nan", "na", "n/a", "null", "none", "-nan"]
            .iter()
            .any(|m| v.eq_ignore_ascii_case(m))
}

/// The missing-values error for `missing` (line, columns) pairs, in line order.
fn missing_error(path: &Path, missing: &[(u64, Vec<&str>)]) -> DataError {
    const DETAILED: usize = 20;
    let mut lines: Vec<String> = missing
        .iter()
        .take(DETAILED)
        .map(|(line, cols)| format!("line {line} ({})", cols.join(", ")))
        .collect();
    if missing.len() > DETAILED {
        let rest: Vec<String> = missing[DETAILED..]
            .iter()
            .map(|(line, _)| line.to_string())
            .collect();
        lines.push(format!("lines {}", rest.join(", ")));
    }
    DataError::Missing {
        path: path.display().to_string(),
        count: missing.len(),
        lines: lines.join("; "),
    }
}

/// What the model learns to predict.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Class labels: `names[idx[i]]` is record i's class. Names are sorted.
    Classes { names: Vec<String>, idx: Vec<usize> },
    /// A numeric target (regression).
    Values(Vec<f64>),
}

/// What kind of model to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Classification if the label column holds any non-number, regression otherwise.
    Auto,
    Classification,
    Regression,
}

/// A labelled table: `x` is row-major `len x feature_names.len()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub feature_names: Vec<String>,
    pub target_name: String,
    pub x: Vec<f64>,
    pub y: Target,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.x.len() / self.n_features()
    }

    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }

    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    pub fn row(&self, i: usize) -> &[f64] {
        let f = self.n_features();
        &self.x[i * f..(i + 1) * f]
    }

    /// The records at `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Dataset {
        let x = rows.iter().flat_map(|&i| self.row(i).to_vec()).collect();
        let y = match &self.y {
            Target::Classes { names, idx } => Target::Classes {
                names: names.clone(),
                idx: rows.iter().map(|&i| idx[i]).collect(),
            },
            Target::Values(v) => Target::Values(rows.iter().map(|&i| v[i]).collect()),
        };
        Dataset {
            feature_names: self.feature_names.clone(),
            target_name: self.target_name.clone(),
            x,
            y,
        }
    }

    /// A seeded shuffle split into (train, holdout); classes are split proportionally.
    pub fn split(&self, holdout: f64, seed: u64) -> (Dataset, Dataset) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut groups: Vec<Vec<usize>> = match &self.y {
            Target::Classes { names, idx } => {
                let mut g = vec![Vec::new(); names.len()];
                for (i, &c) in idx.iter().enumerate() {
                    g[c].push(i);
                }
                g
            }
            Target::Values(v) => vec![(0..v.len()).collect()],
        };
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for g in &mut groups {
            for i in (1..g.len()).rev() {
                g.swap(i, rng.gen_range(0..=i));
            }
            let k = ((g.len() as f64) * holdout).round() as usize;
            test.extend_from_slice(&g[..k]);
            train.extend_from_slice(&g[k..]);
        }
        train.sort_unstable();
        test.sort_unstable();
        (self.select(&train), self.select(&test))
    }

    /// Synthetic records drawn like the data: a random real record, each feature moved by
    /// Gaussian noise of 10% of that feature's standard deviation. Labels follow the source
    /// record, so accuracy stays meaningful.
    pub fn synthesize(&self, n: usize, seed: u64) -> Dataset {
        let f = self.n_features();
        let stats = column_stats(self);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut rows = Vec::with_capacity(n);
        let mut x = Vec::with_capacity(n * f);
        for _ in 0..n {
            let i = rng.gen_range(0..self.len());
            rows.push(i);
            for (j, &v) in self.row(i).iter().enumerate() {
                x.push(v + 0.1 * stats[j].1 * gaussian(&mut rng));
            }
        }
        let mut out = self.select(&rows);
        out.x = x;
        out
    }
}

/// Mean and standard deviation of each feature.
pub fn column_stats(ds: &Dataset) -> Vec<(f64, f64)> {
    let f = ds.n_features();
    let n = ds.len().max(1) as f64;
    (0..f)
        .map(|j| {
            let mean = (0..ds.len()).map(|i| ds.x[i * f + j]).sum::<f64>() / n;
            let var = (0..ds.len())
                .map(|i| (ds.x[i * f + j] - mean).powi(2))
                .sum::<f64>()
                / n;
            (mean, var.sqrt())
        })
        .collect()
}

/// A standard normal sample (Box-Muller).
pub fn gaussian(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.r#gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A synthetic classification problem: `classes` Gaussian clusters in `features` dimensions.
pub fn synthetic_classification(
    records: usize,
    features: usize,
    classes: usize,
    seed: u64,
) -> Dataset {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let centers: Vec<f64> = (0..classes * features)
        .map(|_| 2.0 * gaussian(&mut rng))
        .collect();
    let mut x = Vec::with_capacity(records * features);
    let mut idx = Vec::with_capacity(records);
    for _ in 0..records {
        let c = rng.gen_range(0..classes);
        idx.push(c);
        for j in 0..features {
            x.push(centers[c * features + j] + 1.5 * gaussian(&mut rng));
        }
    }
    Dataset {
        feature_names: (0..features).map(|j| format!("x{j}")).collect(),
        target_name: "label".into(),
        x,
        y: Target::Classes {
            names: (0..classes).map(|c| format!("class{c}")).collect(),
            idx,
        },
    }
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

type CsvReader = csv::Reader<Box<dyn std::io::Read>>;

/// Opens a CSV file, gzip-compressed when its name ends in `.gz` (MNIST ships that way).
fn open(path: &Path) -> Result<CsvReader, DataError> {
    let file = std::fs::File::open(path).map_err(|e| read_err(path, csv::Error::from(e)))?;
    let input: Box<dyn std::io::Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(file)
    };
    // Headers, numbers and labels are trimmed; a text category is read exactly as written
    // (" north" is not "north" to the pipeline's encoder either).
    Ok(csv::ReaderBuilder::new()
        .trim(csv::Trim::Headers)
        .flexible(true)
        .from_reader(input))
}

fn headers(path: &Path, rdr: &mut CsvReader) -> Result<Vec<String>, DataError> {
    Ok(rdr
        .headers()
        .map_err(|e| read_err(path, e))?
        .iter()
        .map(str::to_string)
        .collect())
}

/// Each data row with its line number, refusing rows whose field count differs from the header.
fn rows<'a>(
    path: &'a Path,
    rdr: &'a mut CsvReader,
    width: usize,
) -> impl Iterator<Item = Result<(u64, csv::StringRecord), DataError>> + 'a {
    rdr.records().map(move |rec| {
        let rec = rec.map_err(|e| read_err(path, e))?;
        let line = rec.position().map_or(0, |p| p.line());
        if rec.len() != width {
            return Err(DataError::Ragged {
                path: path.display().to_string(),
                line,
                expected: width,
                found: rec.len(),
            });
        }
        Ok((line, rec))
    })
}

/// How feature cells are read beyond plain numbers, as the model's pipeline says.
#[derive(Debug, Clone, Copy, Default)]
pub struct CellRules<'a> {
    /// Missing cells (empty, NaN, NA) are read as NaN for the pipeline's imputer; without
    /// one, every row holding one is refused, all of them named.
    pub missing: bool,
    /// The pipeline's text columns, by feature position: cells are read as category codes.
    pub text: &'a [TextColumn],
}

impl<'a> CellRules<'a> {
    /// The rules a model's client-side preprocessing sets (plain numbers without one).
    pub fn of(prefix: Option<&'a ClientPrefix>) -> Self {
        prefix.map_or_else(Self::default, |p| CellRules {
            missing: p.imputes(),
            text: &p.text,
        })
    }

    /// One present cell of feature `feature` (named `name`).
    fn read(
        &self,
        path: &Path,
        line: u64,
        feature: usize,
        name: &str,
        value: &str,
    ) -> Result<f64, DataError> {
        match self.text.iter().find(|t| t.column == feature) {
            Some(t) => t.code(value).map_err(|e| DataError::Category {
                path: path.display().to_string(),
                line,
                column: name.to_string(),
                reason: e.to_string(),
            }),
            None => parse_num(path, line, name, value),
        }
    }
}

fn parse_num(path: &Path, line: u64, column: &str, value: &str) -> Result<f64, DataError> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| DataError::NotANumber {
            path: path.display().to_string(),
            line,
            column: column.to_string(),
            value: value.chars().take(40).collect(),
        })
}

/// Reads a labelled CSV: a header row, numeric feature columns, and the `label` column.
pub fn read_labelled_csv(path: &Path, label: &str, task: Task) -> Result<Dataset, DataError> {
    read_labelled(path, label, task, CellRules::default())
}

/// [`read_labelled_csv`] for a model whose pipeline imputes: missing feature cells (empty,
/// NaN, NA) are read as NaN, for the pipeline's imputer (or its refusal, row by row).
pub fn read_labelled_csv_with_missing(
    path: &Path,
    label: &str,
    task: Task,
) -> Result<Dataset, DataError> {
    read_labelled(
        path,
        label,
        task,
        CellRules {
            missing: true,
            ..CellRules::default()
        },
    )
}

/// [`read_labelled_csv`] with cells read as a model's pipeline says (missing cells, text
/// categories: [`CellRules::of`]).
pub fn read_labelled_csv_with(
    path: &Path,
    label: &str,
    task: Task,
    rules: CellRules<'_>,
) -> Result<Dataset, DataError> {
    read_labelled(path, label, task, rules)
}

fn read_labelled(
    path: &Path,
    label: &str,
    task: Task,
    rules: CellRules<'_>,
) -> Result<Dataset, DataError> {
    let allow_missing = rules.missing;
    let mut rdr = open(path)?;
    let headers = headers(path, &mut rdr)?;
    let label_col =
        headers
            .iter()
            .position(|h| h == label)
            .ok_or_else(|| DataError::MissingColumn {
                path: path.display().to_string(),
                column: label.to_string(),
                available: headers.join(", "),
            })?;
    let feature_names: Vec<String> = headers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != label_col)
        .map(|(_, h)| h.clone())
        .collect();
    if feature_names.is_empty() {
        return Err(DataError::Invalid {
            path: path.display().to_string(),
            message: "no feature columns".into(),
        });
    }
    let mut x = Vec::new();
    let mut labels = Vec::new();
    let mut missing: Vec<(u64, Vec<&str>)> = Vec::new();
    for row in rows(path, &mut rdr, headers.len()) {
        let (line, rec) = row?;
        let absent: Vec<&str> = rec
            .iter()
            .enumerate()
            .filter(|&(i, v)| i != label_col && is_missing(v))
            .map(|(i, _)| headers[i].as_str())
            .collect();
        if !absent.is_empty() && !allow_missing {
            // Every such row is named at the end, not just the first.
            missing.push((line, absent));
            continue;
        }
        for (i, v) in rec.iter().enumerate() {
            // Feature position: the column's place among the non-label columns.
            let feature = i - usize::from(i > label_col);
            if i == label_col {
                labels.push(v.trim().to_string());
            } else if is_missing(v) {
                x.push(f64::NAN);
            } else {
                x.push(rules.read(path, line, feature, &headers[i], v)?);
            }
        }
    }
    if !missing.is_empty() {
        return Err(missing_error(path, &missing));
    }
    if labels.is_empty() {
        return Err(DataError::Invalid {
            path: path.display().to_string(),
            message: "no records".into(),
        });
    }
    let numeric = labels.iter().all(|l| l.parse::<f64>().is_ok());
    let classify = match task {
        Task::Auto => !numeric,
        Task::Classification => true,
        Task::Regression => {
            if !numeric {
                return Err(DataError::Invalid {
                    path: path.display().to_string(),
                    message: format!("regression needs a numeric {label:?} column"),
                });
            }
            false
        }
    };
    let y = if classify {
        let mut names: Vec<String> = labels.clone();
        names.sort();
        names.dedup();
        if names.len() < 2 {
            return Err(DataError::Invalid {
                path: path.display().to_string(),
                message: format!(
                    "classification needs at least 2 classes, found {}",
                    names.len()
                ),
            });
        }
        let idx = labels
            .iter()
            .map(|l| names.binary_search(l).expect("present"))
            .collect();
        Target::Classes { names, idx }
    } else {
        Target::Values(labels.iter().map(|l| l.parse().expect("numeric")).collect())
    };
    Ok(Dataset {
        feature_names,
        target_name: label.to_string(),
        x,
        y,
    })
}

/// Reads records to encrypt: the named feature columns, in the model's order, from a CSV with
/// a header row. Other columns (ids, the label) are ignored. Returns row-major values.
pub fn read_records(path: &Path, feature_names: &[String]) -> Result<Vec<f64>, DataError> {
    read_records_as(path, feature_names, CellRules::default())
}

/// [`read_records`] for a model whose pipeline imputes: missing cells are read as NaN, for the
/// pipeline's imputer (or its refusal, row by row).
pub fn read_records_with_missing(
    path: &Path,
    feature_names: &[String],
) -> Result<Vec<f64>, DataError> {
    read_records_as(
        path,
        feature_names,
        CellRules {
            missing: true,
            ..CellRules::default()
        },
    )
}

/// [`read_records`] with cells read as a model's pipeline says (missing cells, text
/// categories: [`CellRules::of`]).
pub fn read_records_with(
    path: &Path,
    feature_names: &[String],
    rules: CellRules<'_>,
) -> Result<Vec<f64>, DataError> {
    read_records_as(path, feature_names, rules)
}

fn read_records_as(
    path: &Path,
    feature_names: &[String],
    rules: CellRules<'_>,
) -> Result<Vec<f64>, DataError> {
    let allow_missing = rules.missing;
    let mut rdr = open(path)?;
    let headers = headers(path, &mut rdr)?;
    let cols: Vec<usize> = feature_names
        .iter()
        .map(|f| {
            headers
                .iter()
                .position(|h| h == f)
                .ok_or_else(|| DataError::MissingColumn {
                    path: path.display().to_string(),
                    column: f.clone(),
                    available: headers.join(", "),
                })
        })
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    let mut missing: Vec<(u64, Vec<&str>)> = Vec::new();
    for row in rows(path, &mut rdr, headers.len()) {
        let (line, rec) = row?;
        let absent: Vec<&str> = cols
            .iter()
            .zip(feature_names)
            .filter(|&(&c, _)| is_missing(&rec[c]))
            .map(|(_, name)| name.as_str())
            .collect();
        if !absent.is_empty() && !allow_missing {
            missing.push((line, absent));
            continue;
        }
        for (feature, (&c, name)) in cols.iter().zip(feature_names).enumerate() {
            out.push(if is_missing(&rec[c]) {
                f64::NAN
            } else {
                rules.read(path, line, feature, name, &rec[c])?
            });
        }
    }
    if !missing.is_empty() {
        return Err(missing_error(path, &missing));
    }
    if out.is_empty() {
        return Err(DataError::Invalid {
            path: path.display().to_string(),
            message: "no records".into(),
        });
    }
    Ok(out)
}

/// Writes a dataset as CSV (features, then the label column).
pub fn write_csv(ds: &Dataset, path: &Path) -> Result<(), DataError> {
    let mut w = csv::Writer::from_path(path).map_err(|e| read_err(path, e))?;
    let mut header = ds.feature_names.clone();
    header.push(ds.target_name.clone());
    w.write_record(&header).map_err(|e| read_err(path, e))?;
    let mut fields: Vec<String> = Vec::with_capacity(header.len());
    for i in 0..ds.len() {
        fields.clear();
        fields.extend(ds.row(i).iter().map(|v| format!("{v:.6}")));
        fields.push(match &ds.y {
            Target::Classes { names, idx } => names[idx[i]].clone(),
            Target::Values(v) => v[i].to_string(),
        });
        w.write_record(&fields).map_err(|e| read_err(path, e))?;
    }
    w.flush().map_err(|e| read_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn bad_files_get_errors_that_name_the_line_and_column() {
        let f = csv("a,b,label\n1,2,x\n3,oops,y\n");
        let e = read_labelled_csv(f.path(), "label", Task::Auto).unwrap_err();
        assert!(
            matches!(e, DataError::NotANumber { line: 3, ref column, .. } if column == "b"),
            "{e}"
        );
        let f = csv("a,b,label\n1,2,x\n3,4\n");
        let e = read_labelled_csv(f.path(), "label", Task::Auto).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::Ragged {
                    line: 3,
                    expected: 3,
                    found: 2,
                    ..
                }
            ),
            "{e}"
        );
        let f = csv("a,b\n1,2\n");
        let e = read_labelled_csv(f.path(), "label", Task::Auto).unwrap_err();
        assert!(e.to_string().contains("no column named \"label\""), "{e}");
        let e = read_records(f.path(), &["a".into(), "c".into()]).unwrap_err();
        assert!(matches!(e, DataError::MissingColumn { .. }), "{e}");
        let f = csv("a,label\n1,x\n2,x\n");
        let e = read_labelled_csv(f.path(), "label", Task::Auto).unwrap_err();
        assert!(e.to_string().contains("at least 2 classes"), "{e}");
    }

    /// Every record with a missing value is named, not just the first; a missing value in a
    /// column the model does not read is no problem; garbage is still "not a number".
    #[test]
    fn missing_values_are_refused_with_every_line() {
        let mut text = String::from("a,b,other\n1,2,\n,4,z\n5,NaN,z\n7,8,z\n");
        for i in 0..25 {
            text.push_str(&format!("{i},NA,z\n"));
        }
        let f = csv(&text);
        let e = read_records(f.path(), &["a".into(), "b".into()]).unwrap_err();
        let DataError::Missing {
            count, ref lines, ..
        } = e
        else {
            panic!("{e}")
        };
        assert_eq!(count, 27);
        assert!(
            lines.starts_with("line 3 (a); line 4 (b); line 6 (b)"),
            "{lines}"
        );
        // Past the first 20, lines are listed without their columns, to the last one.
        assert!(lines.ends_with(", 30"), "{lines}");
        assert!(
            e.to_string().contains("27 records have missing values"),
            "{e}"
        );
        let f = csv("a,b,other\n1,2,\n3,4,\n");
        assert_eq!(
            read_records(f.path(), &["a".into(), "b".into()]).unwrap(),
            vec![1.0, 2.0, 3.0, 4.0]
        );
        let f = csv("a,b\n1,2\n3,x7\n");
        let e = read_records(f.path(), &["a".into(), "b".into()]).unwrap_err();
        assert!(matches!(e, DataError::NotANumber { line: 3, .. }), "{e}");
        // A labelled file too names every row with a hole, unless the model imputes them.
        let f = csv("a,b,label\n1,,x\n2,3,y\n,NA,x\n");
        let e = read_labelled_csv(f.path(), "label", Task::Auto).unwrap_err();
        assert!(
            e.to_string()
                .contains("2 records have missing values (empty, NaN or NA), which the model cannot take (it has no imputer): line 2 (b); line 4 (a, b)"),
            "{e}"
        );
        let ds = read_labelled_csv_with_missing(f.path(), "label", Task::Auto).unwrap();
        assert_eq!(ds.len(), 3);
        assert!(ds.row(0)[1].is_nan() && ds.row(2)[0].is_nan() && ds.row(1) == [2.0, 3.0]);
        let e = read_records_with_missing(f.path(), &["a".into(), "zz".into()]).unwrap_err();
        assert!(matches!(e, DataError::MissingColumn { .. }), "{e}");
        let r = read_records_with_missing(f.path(), &["b".into(), "a".into()]).unwrap();
        assert!(r[0].is_nan() && r[1] == 1.0 && r[2] == 3.0 && r[4].is_nan() && r[5].is_nan());
    }

    #[test]
    fn records_follow_the_model_order_and_ignore_other_columns() {
        let f = csv("id,b,a,label\n7,2,1,x\n8,4,3,y\n");
        let x = read_records(f.path(), &["a".into(), "b".into()]).unwrap();
        assert_eq!(x, vec![1.0, 2.0, 3.0, 4.0]);
        let ds = read_labelled_csv(f.path(), "label", Task::Auto).unwrap();
        assert_eq!(ds.feature_names, vec!["id", "b", "a"]);
        let (tr, ho) = ds.split(0.5, 1);
        assert_eq!(tr.len() + ho.len(), 2);
    }
}
