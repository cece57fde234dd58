//! Reading a report: the attachment (plain XML, gzip or zip) to XML, the XML to a [`Report`].
//! Elements are matched by local name, so RFC 7489's un-namespaced reports and DMARCbis's
//! `urn:ietf:params:xml:ns:dmarc-2.0` ones read alike. No DTD is accepted (roxmltree's
//! default), and no archive expands past [`MAX_XML`].

use crate::{AuthResult, Policy, Record, Report, valid_domain};
use roxmltree::{Document, Node};
use std::io::Read;

/// The largest report accepted, uncompressed (large receivers' daily reports for a busy
/// domain reach a few MB).
pub const MAX_XML: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not XML, gzip or zip.
    #[error("not an XML, gzip or zip attachment")]
    NotAnAttachment,
    #[error("damaged {kind} attachment: {detail}")]
    Damaged { kind: &'static str, detail: String },
    #[error("the zip attachment holds no .xml file")]
    NoXmlInZip,
    #[error("the report is larger than {} MiB uncompressed", MAX_XML >> 20)]
    TooLarge,
    #[error("not well-formed XML: {0}")]
    Xml(String),
    #[error("not a DMARC aggregate report: {0}")]
    NotAReport(String),
}

/// The report's XML from an attachment's decoded content, told apart by its first bytes
/// (receivers label them `application/gzip`, `application/zip`, `application/octet-stream`,
/// `text/xml`, ... inconsistently).
pub fn extract(content: &[u8]) -> Result<Vec<u8>, ParseError> {
    if content.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(content)
            .take(MAX_XML + 1)
            .read_to_end(&mut out)
            .map_err(|e| ParseError::Damaged {
                kind: "gzip",
                detail: e.to_string(),
            })?;
        return bounded(out);
    }
    if content.starts_with(b"PK\x03\x04") {
        let damaged = |e: zip::result::ZipError| ParseError::Damaged {
            kind: "zip",
            detail: e.to_string(),
        };
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(content)).map_err(damaged)?;
        let name = zip
            .file_names()
            .filter(|n| n.to_ascii_lowercase().ends_with(".xml"))
            .min()
            .map(str::to_string)
            .ok_or(ParseError::NoXmlInZip)?;
        let mut out = Vec::new();
        zip.by_name(&name)
            .map_err(damaged)?
            .take(MAX_XML + 1)
            .read_to_end(&mut out)
            .map_err(|e| ParseError::Damaged {
                kind: "zip",
                detail: e.to_string(),
            })?;
        return bounded(out);
    }
    let text = content.strip_prefix(b"\xef\xbb\xbf").unwrap_or(content);
    if text.trim_ascii_start().starts_with(b"<") {
        return bounded(text.to_vec());
    }
    Err(ParseError::NotAnAttachment)
}

fn bounded(xml: Vec<u8>) -> Result<Vec<u8>, ParseError> {
    if xml.len() as u64 > MAX_XML {
        Err(ParseError::TooLarge)
    } else {
        Ok(xml)
    }
}

fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn children<'a, 'i>(n: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

/// The trimmed text at a path of child elements; none when absent or empty.
fn text(n: Node<'_, '_>, path: &[&str]) -> Option<String> {
    let mut n = n;
    for p in path {
        n = child(n, p)?;
    }
    let t: String = n
        .descendants()
        .filter(|d| d.is_text())
        .filter_map(|d| d.text())
        .collect();
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn lower(n: Node<'_, '_>, path: &[&str]) -> Option<String> {
    text(n, path).map(|t| t.to_ascii_lowercase())
}

fn number(n: Node<'_, '_>, path: &[&str]) -> Option<u64> {
    text(n, path)?.parse().ok()
}

/// Reads an aggregate report. Records without a source address or count are skipped (and
/// counted); a report without reporter, report id, period or domain is refused.
pub fn parse_xml(xml: &[u8]) -> Result<Report, ParseError> {
    let xml = xml.strip_prefix(b"\xef\xbb\xbf").unwrap_or(xml);
    let text_xml = std::str::from_utf8(xml).map_err(|e| ParseError::Xml(e.to_string()))?;
    let doc = Document::parse(text_xml).map_err(|e| ParseError::Xml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "feedback" {
        return Err(ParseError::NotAReport(format!(
            "the root element is <{}>, not <feedback>",
            root.tag_name().name()
        )));
    }
    let missing = |what: &str| ParseError::NotAReport(format!("no {what}"));
    let meta = child(root, "report_metadata").ok_or_else(|| missing("report_metadata"))?;
    let published = child(root, "policy_published").ok_or_else(|| missing("policy_published"))?;
    let reporter = text(meta, &["org_name"]).ok_or_else(|| missing("org_name"))?;
    let report_id = text(meta, &["report_id"]).ok_or_else(|| missing("report_id"))?;
    let begin = number(meta, &["date_range", "begin"]).ok_or_else(|| missing("date_range"))?;
    let end = number(meta, &["date_range", "end"]).ok_or_else(|| missing("date_range"))?;
    if end > crate::MAX_TIME {
        return Err(ParseError::NotAReport(format!(
            "the period ends at {end}, past the year 2286"
        )));
    }
    if end < begin {
        return Err(ParseError::NotAReport(format!(
            "the period ends ({end}) before it begins ({begin})"
        )));
    }
    let domain = lower(published, &["domain"])
        .map(|d| d.trim_end_matches('.').to_string())
        .ok_or_else(|| missing("policy_published domain"))?;
    if !valid_domain(&domain) {
        return Err(ParseError::NotAReport(format!(
            "`{domain}` is not a domain name"
        )));
    }
    let policy = Policy {
        p: lower(published, &["p"]).unwrap_or_else(|| "none".into()),
        sp: lower(published, &["sp"]),
        pct: number(published, &["pct"]).map(|p| p.min(100) as u8),
        adkim: lower(published, &["adkim"]),
        aspf: lower(published, &["aspf"]),
    };
    let mut records = Vec::new();
    let mut skipped = 0;
    for r in children(root, "record") {
        match record(r) {
            Some(rec) => records.push(rec),
            None => skipped += 1,
        }
    }
    Ok(Report {
        reporter,
        reporter_email: text(meta, &["email"]).unwrap_or_default(),
        report_id,
        begin,
        end,
        domain,
        policy,
        records,
        skipped,
    })
}

fn record(r: Node<'_, '_>) -> Option<Record> {
    let row = child(r, "row")?;
    let source_ip = text(row, &["source_ip"])?
        .parse::<std::net::IpAddr>()
        .ok()?
        .to_string();
    let count = number(row, &["count"])?;
    let evaluated = child(row, "policy_evaluated");
    let ev = |name: &str| {
        evaluated
            .and_then(|e| lower(e, &[name]))
            .unwrap_or_else(|| "none".into())
    };
    let reasons = evaluated
        .map(|e| {
            children(e, "reason")
                .filter_map(|n| lower(n, &["type"]))
                .collect()
        })
        .unwrap_or_default();
    let ids = child(r, "identifiers");
    let id = |name: &str| ids.and_then(|i| lower(i, &[name]));
    let results = |kind: &'static str, selector: &'static str| -> Vec<AuthResult> {
        child(r, "auth_results")
            .map(|a| {
                children(a, kind)
                    .filter_map(|n| {
                        Some(AuthResult {
                            domain: lower(n, &["domain"]).unwrap_or_default(),
                            result: lower(n, &["result"])?,
                            selector: text(n, &[selector]),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    Some(Record {
        source_ip,
        count,
        disposition: ev("disposition"),
        dkim: ev("dkim"),
        spf: ev("spf"),
        reasons,
        header_from: id("header_from").unwrap_or_default(),
        envelope_from: id("envelope_from"),
        envelope_to: id("envelope_to"),
        dkim_results: results("dkim", "selector"),
        spf_results: results("spf", "scope"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MINIMAL: &str = r#"<?xml version="1.0" encoding="UTF-8" ?>
<feedback>
  <report_metadata>
    <org_name>google.com</org_name>
    <email>noreply-dmarc-support@google.com</email>
    <report_id>1234</report_id>
    <date_range><begin>1700006400</begin><end>1700092799</end></date_range>
  </report_metadata>
  <policy_published>
    <domain>Example.COM</domain><adkim>r</adkim><aspf>r</aspf><p>reject</p><sp>reject</sp><pct>100</pct>
  </policy_published>
  <record>
    <row>
      <source_ip>2001:DB8::1</source_ip><count>3</count>
      <policy_evaluated><disposition>none</disposition><dkim>pass</dkim><spf>fail</spf></policy_evaluated>
    </row>
    <identifiers><header_from>example.com</header_from></identifiers>
    <auth_results>
      <dkim><domain>example.com</domain><result>pass</result><selector>s1</selector></dkim>
      <spf><domain>bounce.example.com</domain><result>softfail</result></spf>
    </auth_results>
  </record>
  <record><row><source_ip>not-an-address</source_ip><count>1</count></row></record>
</feedback>"#;

    #[test]
    fn reads_a_report() {
        let r = parse_xml(MINIMAL.as_bytes()).unwrap();
        assert_eq!(r.reporter, "google.com");
        assert_eq!(r.domain, "example.com");
        assert_eq!(r.policy.p, "reject");
        assert_eq!(r.policy.pct, Some(100));
        assert_eq!((r.begin, r.end), (1_700_006_400, 1_700_092_799));
        assert_eq!(r.records.len(), 1);
        assert_eq!(r.skipped, 1);
        let rec = &r.records[0];
        assert_eq!(rec.source_ip, "2001:db8::1");
        assert_eq!(rec.count, 3);
        assert!(rec.dmarc_pass());
        assert_eq!(rec.dkim_results[0].selector.as_deref(), Some("s1"));
        assert_eq!(rec.spf_results[0].result, "softfail");
    }

    #[test]
    fn namespaced_reports_read_alike() {
        let ns = MINIMAL.replace(
            "<feedback>",
            r#"<feedback xmlns="urn:ietf:params:xml:ns:dmarc-2.0">"#,
        );
        assert_eq!(
            parse_xml(ns.as_bytes()).unwrap(),
            parse_xml(MINIMAL.as_bytes()).unwrap()
        );
    }

    #[test]
    fn gzip_zip_and_plain_give_the_same_xml() {
        let xml = MINIMAL.as_bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(xml).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(extract(&gz).unwrap(), xml);

        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.start_file("google.com!example.com!1700006400!1700092799.xml", opts)
            .unwrap();
        z.write_all(xml).unwrap();
        let z = z.finish().unwrap().into_inner();
        assert_eq!(extract(&z).unwrap(), xml);

        assert_eq!(extract(xml).unwrap(), xml);
        assert!(matches!(
            extract(b"hello"),
            Err(ParseError::NotAnAttachment)
        ));
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        assert!(matches!(
            extract(&[0x1f, 0x8b, 8, 0, 1, 2, 3]),
            Err(ParseError::Damaged { kind: "gzip", .. })
        ));
        assert!(matches!(
            extract(b"PK\x03\x04garbage"),
            Err(ParseError::Damaged { kind: "zip", .. })
        ));
        assert!(matches!(parse_xml(b"<feedback>"), Err(ParseError::Xml(_))));
        assert!(matches!(
            parse_xml(b"<html><body/></html>"),
            Err(ParseError::NotAReport(_))
        ));
        let no_domain = MINIMAL.replace("<domain>Example.COM</domain>", "");
        assert!(matches!(
            parse_xml(no_domain.as_bytes()),
            Err(ParseError::NotAReport(m)) if m.contains("domain")
        ));
        let far = MINIMAL.replace("<end>1700092799</end>", "<end>99999999999</end>");
        assert!(matches!(
            parse_xml(far.as_bytes()),
            Err(ParseError::NotAReport(m)) if m.contains("2286")
        ));
        let dtd = format!(
            "<!DOCTYPE feedback [<!ENTITY x \"y\">]>{}",
            MINIMAL.trim_start_matches(r#"<?xml version="1.0" encoding="UTF-8" ?>"#)
        );
        assert!(matches!(parse_xml(dtd.as_bytes()), Err(ParseError::Xml(_))));
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_bound() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![b' '; 1 << 20];
        for _ in 0..(MAX_XML >> 20) + 1 {
            gz.write_all(&zeros).unwrap();
        }
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 1 << 20);
        assert!(matches!(extract(&gz), Err(ParseError::TooLarge)));
    }
}
