//! Training curves from a run's `metrics.csv` as an SVG: the losses on the left, the bit
//! accuracy of every scale on the right (transformer runs). Each series is drawn as a moving
//! mean over `SMOOTH` steps, the loss also raw and faint, so the trend reads through the noise
//! of small batches.

use std::fmt::Write;

/// Steps averaged by the moving mean.
const SMOOTH: usize = 50;
const PANEL_W: f64 = 440.0;
const PANEL_H: f64 = 300.0;
const MARGIN: f64 = 56.0;
/// Colours of successive series (the Tableau 10 palette).
const COLORS: [&str; 10] =
    ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];

/// One named column of numbers, indexed like `steps`.
struct Series {
    name: String,
    values: Vec<f64>,
}

/// The SVG of a `metrics.csv` text (header `step,…`); errors say what is wrong with it.
pub fn metrics_svg(csv: &str, title: &str) -> Result<String, String> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().ok_or("the file is empty")?.split(',').collect();
    if header.first() != Some(&"step") {
        return Err("the first column is not 'step'".into());
    }
    let rows: Vec<Vec<f64>> = lines
        .enumerate()
        .map(|(i, line)| {
            line.split(',')
                .map(|v| v.parse::<f64>().map_err(|_| format!("line {}: '{v}' is not a number", i + 2)))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()?;
    if let Some((i, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != header.len()) {
        return Err(format!("line {}: {} values for {} columns", i + 2, row.len(), header.len()));
    }
    if rows.is_empty() {
        return Err("no steps logged yet".into());
    }
    let steps: Vec<f64> = rows.iter().map(|r| r[0]).collect();
    let column = |j: usize| Series { name: header[j].to_string(), values: rows.iter().map(|r| r[j]).collect() };
    let losses: Vec<Series> =
        (1..header.len()).filter(|&j| ["loss", "reconstruction"].contains(&header[j])).map(column).collect();
    let accuracies: Vec<Series> =
        (1..header.len()).filter(|&j| header[j].starts_with("bit_acc_")).map(column).collect();

    let panels = if accuracies.is_empty() { 1.0 } else { 2.0 };
    let (width, height) = (panels * (PANEL_W + MARGIN) + MARGIN, PANEL_H + 2.0 * MARGIN);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{MARGIN}" y="22" font-size="15">{}</text>"#, escape(title));
    panel(&mut svg, MARGIN, &steps, &losses, "loss", true);
    if !accuracies.is_empty() {
        panel(&mut svg, 2.0 * MARGIN + PANEL_W, &steps, &accuracies, "bit accuracy per scale", false);
    }
    svg.push_str("</svg>\n");
    Ok(svg)
}

/// One plot at horizontal offset `x0`: axes with their ranges, the smoothed series (and the
/// raw ones, faint, when `raw`), a legend.
fn panel(svg: &mut String, x0: f64, steps: &[f64], series: &[Series], title: &str, raw: bool) {
    let y0 = MARGIN;
    let smoothed: Vec<Vec<f64>> = series.iter().map(|s| moving_mean(&s.values)).collect();
    let shown = if raw { series.iter().map(|s| &s.values).collect::<Vec<_>>() } else { smoothed.iter().collect() };
    let (lo, hi) = range(shown.iter().flat_map(|v| v.iter().copied()));
    let (first, last) = (steps[0], *steps.last().unwrap_or(&steps[0]));
    let x = |step: f64| x0 + (step - first) / (last - first).max(1.0) * PANEL_W;
    let y = |v: f64| y0 + PANEL_H - (v - lo) / (hi - lo) * PANEL_H;
    let _ = writeln!(svg, r#"<text x="{x0}" y="{}" font-size="13">{title}</text>"#, y0 - 10.0);
    let _ =
        writeln!(svg, r##"<rect x="{x0}" y="{y0}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#888"/>"##);
    for (v, anchor_y) in [(lo, y0 + PANEL_H), (hi, y0 + 10.0)] {
        let _ = writeln!(svg, r#"<text x="{}" y="{anchor_y}" text-anchor="end">{}</text>"#, x0 - 4.0, short(v));
    }
    let bottom = y0 + PANEL_H + 16.0;
    let _ = writeln!(svg, r#"<text x="{x0}" y="{bottom}">step {first}</text>"#);
    let _ = writeln!(svg, r#"<text x="{}" y="{bottom}" text-anchor="end">{last}</text>"#, x0 + PANEL_W);
    for (i, (s, smooth)) in series.iter().zip(&smoothed).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = |values: &[f64]| {
            steps.iter().zip(values).map(|(&st, &v)| format!("{:.1},{:.1}", x(st), y(v))).collect::<Vec<_>>().join(" ")
        };
        if raw {
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-opacity="0.25" stroke-width="1" points="{}"/>"#,
                points(&s.values)
            );
        }
        let _ =
            writeln!(svg, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, points(smooth));
        let ly = y0 + 16.0 + 15.0 * i as f64;
        let lx = x0 + PANEL_W - 150.0;
        let _ = writeln!(svg, r#"<rect x="{lx}" y="{}" width="12" height="3" fill="{color}"/>"#, ly - 4.0);
        let label = s.name.replace("bit_acc_", "scale ");
        let _ = writeln!(svg, r#"<text x="{}" y="{ly}">{} (mean of {SMOOTH})</text>"#, lx + 16.0, escape(&label));
    }
}

/// The mean of each value and the up to `SMOOTH − 1` before it.
fn moving_mean(values: &[f64]) -> Vec<f64> {
    let mut sum = 0.0;
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            sum += v;
            if i >= SMOOTH {
                sum -= values[i - SMOOTH];
            }
            sum / (i + 1).min(SMOOTH) as f64
        })
        .collect()
}

/// The finite values' range, widened when flat so the plot has a height.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-9 { (lo - 0.5, hi + 0.5) } else { (lo, hi) }
}

fn short(v: f64) -> String {
    format!("{v:.3}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transformer_run_plots_its_loss_and_every_scale() {
        let csv = "step,loss,lr,grad_norm,bit_acc_0,bit_acc_1\n1,0.9,1e-3,2.0,0.5,0.5\n2,0.8,1e-3,1.5,0.6,0.55\n3,0.7,1e-3,1.2,0.7,0.6\n";
        let svg = metrics_svg(csv, "run <a>").unwrap();
        // A valid SVG, by the renderer's own parser.
        resvg::usvg::Tree::from_str(&svg, &resvg::usvg::Options::default()).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2 + 2, "loss raw and smoothed, two scales");
        assert!(svg.contains("scale 1 (mean of 50)") && svg.contains("run &lt;a&gt;"));
        assert!(!svg.contains("grad_norm"));
    }

    #[test]
    fn a_vae_run_has_one_panel_and_bad_files_are_named() {
        let csv = "step,loss,lr,grad_norm,reconstruction,commitment,entropy\n1,0.5,1e-4,1,0.4,0.1,-9\n";
        let svg = metrics_svg(csv, "vae").unwrap();
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(metrics_svg("", "x").unwrap_err().contains("empty"));
        assert!(metrics_svg("step,loss\n1,abc\n", "x").unwrap_err().contains("line 2"));
        assert!(metrics_svg("step,loss\n", "x").unwrap_err().contains("no steps"));
        assert!(metrics_svg("loss\n1\n", "x").unwrap_err().contains("'step'"));
    }

    #[test]
    fn the_moving_mean_averages_the_last_steps() {
        let v: Vec<f64> = (0..60).map(f64::from).collect();
        let m = moving_mean(&v);
        assert_eq!(m[0], 0.0);
        assert_eq!(m[3], 1.5);
        assert_eq!(m[59], (10..60).sum::<i32>() as f64 / 50.0);
    }
}
