//! The next page of an API, by the source's `pagination` rule: pure, from the page just read
//! (its URL, its JSON, its `Link` header and how many records it held).

use pipeline::http::{Pagination, json_at};
use url::Url;

/// Where a window's pagination is.
#[derive(Debug, Clone)]
pub struct Paging {
    rule: Pagination,
    /// The page number sent last (`page`).
    page: u64,
    /// Records read so far (`offset`).
    offset: u64,
    /// The cursor sent last (`cursor`): an API that hands the same one back is done.
    last_cursor: Option<String>,
}

impl Paging {
    pub fn new(rule: &Pagination) -> Paging {
        let page = match rule {
            Pagination::Page { first_page, .. } => *first_page,
            _ => 0,
        };
        Paging {
            rule: rule.clone(),
            page,
            offset: 0,
            last_cursor: None,
        }
    }

    /// The first request: the window's URL with the rule's first page, size or offset.
    pub fn first(&self, mut url: Url) -> Url {
        match &self.rule {
            Pagination::Page {
                page_param,
                size_param,
                size,
                ..
            } => {
                set_param(&mut url, page_param, &self.page.to_string());
                if let (Some(p), Some(n)) = (size_param, size) {
                    set_param(&mut url, p, &n.to_string());
                }
            }
            Pagination::Offset {
                offset_param,
                size_param,
                size,
            } => {
                set_param(&mut url, offset_param, "0");
                set_param(&mut url, size_param, &size.to_string());
            }
            _ => {}
        }
        url
    }

    /// The request after the page `current` answered with `body` (`link`: its `Link` header)
    /// holding `records` records; `None` when that page was the last. An error names what in the
    /// page could not be followed.
    pub fn next(
        &mut self,
        current: &Url,
        body: &serde_json::Value,
        link: Option<&str>,
        records: usize,
    ) -> Result<Option<Url>, String> {
        match &self.rule {
            Pagination::None => Ok(None),
            Pagination::NextLink { next_path } => match json_at(body, next_path) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
                Some(serde_json::Value::String(s)) => current
                    .join(s.trim())
                    .map(Some)
                    .map_err(|e| format!("the next link {s:?} at {next_path:?} is not a URL: {e}")),
                Some(other) => Err(format!(
                    "the next link at {next_path:?} is {other}, not a URL string"
                )),
            },
            Pagination::LinkHeader => match link.and_then(next_link) {
                None => Ok(None),
                Some(s) => current
                    .join(&s)
                    .map(Some)
                    .map_err(|e| format!("the Link header's next URL {s:?} is not a URL: {e}")),
            },
            Pagination::Cursor {
                cursor_path,
                cursor_param,
            } => {
                let cursor = match json_at(body, cursor_path) {
                    None | Some(serde_json::Value::Null) => return Ok(None),
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Number(n)) => n.to_string(),
                    Some(other) => {
                        return Err(format!(
                            "the cursor at {cursor_path:?} is {other}, not a string or number"
                        ));
                    }
                };
                if cursor.is_empty() || self.last_cursor.as_deref() == Some(cursor.as_str()) {
                    return Ok(None);
                }
                let mut url = current.clone();
                set_param(&mut url, cursor_param, &cursor);
                self.last_cursor = Some(cursor);
                Ok(Some(url))
            }
            Pagination::Page {
                page_param, size, ..
            } => {
                if records == 0 || size.is_some_and(|n| (records as u64) < n) {
                    return Ok(None);
                }
                self.page += 1;
                let mut url = current.clone();
                set_param(&mut url, page_param, &self.page.to_string());
                Ok(Some(url))
            }
            Pagination::Offset {
                offset_param, size, ..
            } => {
                self.offset += records as u64;
                if records == 0 || (records as u64) < *size {
                    return Ok(None);
                }
                let mut url = current.clone();
                set_param(&mut url, offset_param, &self.offset.to_string());
                Ok(Some(url))
            }
        }
    }
}

/// Sets query parameter `name` to `value`, replacing any value it had (other parameters keep
/// their order).
pub fn set_param(url: &mut Url, name: &str, value: &str) {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut q = url.query_pairs_mut();
    q.clear();
    for (k, v) in &kept {
        q.append_pair(k, v);
    }
    q.append_pair(name, value);
}

/// The `rel="next"` target of a `Link` header (RFC 8288): `<https://…?page=2>; rel="next"`.
pub fn next_link(header: &str) -> Option<String> {
    let mut rest = header;
    while let Some(open) = rest.find('<') {
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        let params_end = rest[close..].find('<').map_or(rest.len(), |i| close + i);
        let params = &rest[close + 1..params_end];
        let is_next = params.split(';').any(|p| {
            let p = p.trim().trim_end_matches(',').trim();
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            })
        });
        if is_next {
            return Some(target.to_string());
        }
        rest = &rest[params_end..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn next_links_are_followed_relative_to_the_page_until_absent() {
        let rule = Pagination::NextLink {
            next_path: "links.next".into(),
        };
        let mut p = Paging::new(&rule);
        let at = url("https://api.test/v1/orders?since=x");
        let next = p
            .next(
                &at,
                &json!({"links": {"next": "/v1/orders?page=2"}}),
                None,
                10,
            )
            .unwrap();
        assert_eq!(next.unwrap().as_str(), "https://api.test/v1/orders?page=2");
        for end in [
            json!({"links": {"next": null}}),
            json!({"links": {}}),
            json!({"links": {"next": ""}}),
        ] {
            assert_eq!(p.next(&at, &end, None, 10).unwrap(), None, "{end}");
        }
        let e = p
            .next(&at, &json!({"links": {"next": 7}}), None, 1)
            .unwrap_err();
        assert!(e.contains("links.next") && e.contains('7'), "{e}");
    }

    #[test]
    fn the_link_headers_next_is_found_among_other_relations() {
        let h = r#"<https://api.test/r?page=1>; rel="prev", <https://api.test/r?page=3>; rel="next", <https://api.test/r?page=9>; rel="last""#;
        assert_eq!(next_link(h).as_deref(), Some("https://api.test/r?page=3"));
        assert_eq!(
            next_link(r#"</r?page=2>; rel="next last""#).as_deref(),
            Some("/r?page=2")
        );
        assert_eq!(
            next_link(r#"<https://a.test/x>; rel=next"#).as_deref(),
            Some("https://a.test/x")
        );
        assert_eq!(
            next_link(r#"<https://api.test/r?page=1>; rel="prev""#),
            None
        );
        assert_eq!(next_link("garbage"), None);
        let mut p = Paging::new(&Pagination::LinkHeader);
        let at = url("https://api.test/r?page=2");
        assert_eq!(
            p.next(&at, &json!([]), Some(h), 0)
                .unwrap()
                .unwrap()
                .as_str(),
            "https://api.test/r?page=3"
        );
        assert_eq!(p.next(&at, &json!([]), None, 5).unwrap(), None);
    }

    #[test]
    fn a_cursor_is_sent_back_until_it_is_absent_or_repeated() {
        let rule = Pagination::Cursor {
            cursor_path: "meta.next_cursor".into(),
            cursor_param: "after".into(),
        };
        let mut p = Paging::new(&rule);
        let first = p.first(url("https://api.test/e?from=1&after=old"));
        assert_eq!(first.as_str(), "https://api.test/e?from=1&after=old");
        let second = p
            .next(&first, &json!({"meta": {"next_cursor": "c2"}}), None, 3)
            .unwrap()
            .unwrap();
        assert_eq!(second.as_str(), "https://api.test/e?from=1&after=c2");
        let third = p
            .next(&second, &json!({"meta": {"next_cursor": 300}}), None, 3)
            .unwrap()
            .unwrap();
        assert_eq!(third.as_str(), "https://api.test/e?from=1&after=300");
        assert_eq!(
            p.next(&third, &json!({"meta": {"next_cursor": 300}}), None, 3)
                .unwrap(),
            None,
            "repeated"
        );
        assert_eq!(p.next(&third, &json!({"meta": {}}), None, 3).unwrap(), None);
    }

    #[test]
    fn pages_and_offsets_count_up_until_a_short_page() {
        let rule = Pagination::Page {
            page_param: "p".into(),
            first_page: 0,
            size_param: Some("per_page".into()),
            size: Some(2),
        };
        let mut p = Paging::new(&rule);
        let first = p.first(url("https://api.test/x?q=1"));
        assert_eq!(first.as_str(), "https://api.test/x?q=1&p=0&per_page=2");
        let second = p.next(&first, &json!([]), None, 2).unwrap().unwrap();
        assert_eq!(second.as_str(), "https://api.test/x?q=1&per_page=2&p=1");
        assert_eq!(
            p.next(&second, &json!([]), None, 1).unwrap(),
            None,
            "short page"
        );

        let rule = Pagination::Offset {
            offset_param: "offset".into(),
            size_param: "limit".into(),
            size: 100,
        };
        let mut p = Paging::new(&rule);
        let first = p.first(url("https://api.test/x"));
        assert_eq!(first.as_str(), "https://api.test/x?offset=0&limit=100");
        let second = p.next(&first, &json!([]), None, 100).unwrap().unwrap();
        assert_eq!(second.as_str(), "https://api.test/x?limit=100&offset=100");
        assert_eq!(
            p.next(&second, &json!([]), None, 0).unwrap(),
            None,
            "empty page"
        );

        let unsized_pages = Pagination::Page {
            page_param: "page".into(),
            first_page: 1,
            size_param: None,
            size: None,
        };
        let mut p = Paging::new(&unsized_pages);
        let at = p.first(url("https://api.test/x"));
        assert!(p.next(&at, &json!([]), None, 7).unwrap().is_some());
        assert_eq!(
            p.next(&at, &json!([]), None, 0).unwrap(),
            None,
            "an empty page ends"
        );
    }
}
