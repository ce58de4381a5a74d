//! Every (template, pixel budget) schedule against the official table dumped in
//! `fixtures/scale_schedules.json`: grids, pixel size and sequence length.

use infinity::models::schedule::{PixelBudget, TEMPLATES, Template};
use serde_json::Value;

fn golden() -> Value {
    serde_json::from_str(include_str!("fixtures/scale_schedules.json")).unwrap()
}

fn template_key(t: f64) -> String {
    // The dump's keys are Python's str() of the ratio: "1", "2", "3" for whole numbers.
    if t.fract() == 0.0 { format!("{}", t as i64) } else { format!("{t}") }
}

#[test]
fn every_schedule_matches_the_official_table() {
    let golden = golden();
    let mut checked = 0;
    for &t in &TEMPLATES {
        let template = Template::exact(t).unwrap();
        for pn in PixelBudget::ALL {
            let g = &golden[template_key(t)][pn.name()];
            assert!(g.is_object(), "no golden entry for template {t} at {pn}");
            let s = template.schedule(pn);
            let want: Vec<(usize, usize)> = g["scales_hw_as_used_for_images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e[1].as_u64().unwrap() as usize, e[2].as_u64().unwrap() as usize))
                .collect();
            assert_eq!(s.grids, want, "template {t} {pn}");
            assert_eq!(s.seq_len() as u64, g["seq_len"].as_u64().unwrap(), "template {t} {pn}");
            let (h, w) = s.pixel_size();
            assert_eq!([h as u64, w as u64], [g["pixel_hw"][0].as_u64().unwrap(), g["pixel_hw"][1].as_u64().unwrap()]);
            checked += 1;
        }
    }
    assert_eq!(checked, 60);
    assert_eq!(golden.as_object().unwrap().len(), TEMPLATES.len(), "the dump has templates we do not know");
}

#[test]
fn nearest_template_picks_each_template_for_its_own_ratio() {
    for &t in &TEMPLATES {
        assert_eq!(Template::nearest(t).unwrap().ratio(), t);
    }
    // 16:9 landscape (0.5625) is nearest to 0.571.
    assert_eq!(Template::nearest(9.0 / 16.0).unwrap().ratio(), 0.571);
}
