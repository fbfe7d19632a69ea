//! `/`: a small HTML page listing the endpoints, from [`super::ROUTES`].
//!
//! Reads only the table; cannot fail.

use axum::response::Html;

use super::ROUTES;

pub async fn get() -> Html<String> {
    let mut page = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>vmscope</title></head><body>\n\
         <h1>vmscope</h1>\n<p>VM metrics measured from the host. API described in docs/openapi.yaml.</p>\n<ul>\n",
    );
    for r in ROUTES {
        // Paths and summaries are fixed strings without markup characters.
        if r.path.contains('{') {
            page.push_str(&format!(
                "<li><code>{}</code> - {}</li>\n",
                r.path, r.summary
            ));
        } else {
            page.push_str(&format!(
                "<li><a href=\"{0}\"><code>{0}</code></a> - {1}</li>\n",
                r.path, r.summary
            ));
        }
    }
    page.push_str("</ul>\n</body></html>\n");
    Html(page)
}
