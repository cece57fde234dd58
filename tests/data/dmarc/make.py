#!/usr/bin/env python3
"""Writes the DMARC aggregate report fixtures of tests/dmarc.rs, in the shapes the large
receivers send (element order, namespaces, file names and compression as they do; the
addresses and counts are made up, from the documentation ranges):

- Google: XML without namespace, zipped, file `google.com!<domain>!<begin>!<end>.zip`;
- Microsoft (Outlook.com / Exchange Online): XML with xsd/xsi namespace declarations, a
  <version>, envelope_to in the identifiers, gzipped as `<reporter>!<domain>!<b>!<e>.xml.gz`;
- Yahoo: XML gzipped, reasons for a policy override (forwarded), IPv6 sources.

Python's zipfile and gzip make the archives: an implementation independent of the one
the plugin reads them with. Run it again to regenerate; the outputs are committed.
"""
import gzip, io, os, zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = 1763596800, 1763683199  # 2025-11-20T00:00:00Z .. 23:59:59Z


def google():
    return f"""<?xml version="1.0" encoding="UTF-8" ?>
<feedback>
  <report_metadata>
    <org_name>google.com</org_name>
    <email>noreply-dmarc-support@google.com</email>
    <extra_contact_info>https://support.google.com/a/answer/2466580</extra_contact_info>
    <report_id>9876543210987654321</report_id>
    <date_range>
      <begin>{BEGIN}</begin>
      <end>{END}</end>
    </date_range>
  </report_metadata>
  <policy_published>
    <domain>example.com</domain>
    <adkim>r</adkim>
    <aspf>r</aspf>
    <p>quarantine</p>
    <sp>quarantine</sp>
    <pct>100</pct>
    <np>quarantine</np>
  </policy_published>
  <record>
    <row>
      <source_ip>192.0.2.10</source_ip>
      <count>120</count>
      <policy_evaluated>
        <disposition>none</disposition>
        <dkim>pass</dkim>
        <spf>pass</spf>
      </policy_evaluated>
    </row>
    <identifiers>
      <header_from>example.com</header_from>
    </identifiers>
    <auth_results>
      <dkim>
        <domain>example.com</domain>
        <result>pass</result>
        <selector>s2025</selector>
      </dkim>
      <spf>
        <domain>example.com</domain>
        <result>pass</result>
      </spf>
    </auth_results>
  </record>
  <record>
    <row>
      <source_ip>198.51.100.23</source_ip>
      <count>7</count>
      <policy_evaluated>
        <disposition>quarantine</disposition>
        <dkim>fail</dkim>
        <spf>fail</spf>
      </policy_evaluated>
    </row>
    <identifiers>
      <header_from>example.com</header_from>
    </identifiers>
    <auth_results>
      <spf>
        <domain>spoofer.example.net</domain>
        <result>pass</result>
      </spf>
    </auth_results>
  </record>
  <record>
    <row>
      <source_ip>203.0.113.5</source_ip>
      <count>3</count>
      <policy_evaluated>
        <disposition>none</disposition>
        <dkim>pass</dkim>
        <spf>fail</spf>
      </policy_evaluated>
    </row>
    <identifiers>
      <header_from>example.com</header_from>
    </identifiers>
    <auth_results>
      <dkim>
        <domain>example.com</domain>
        <result>pass</result>
        <selector>s2025</selector>
      </dkim>
      <spf>
        <domain>lists.example.org</domain>
        <result>pass</result>
      </spf>
    </auth_results>
  </record>
</feedback>
"""


def microsoft():
    rec = lambda ip, n, disp, dkim, spf, to, dkim_res, spf_res: (
        f"<record><row><source_ip>{ip}</source_ip><count>{n}</count><policy_evaluated>"
        f"<disposition>{disp}</disposition><dkim>{dkim}</dkim><spf>{spf}</spf></policy_evaluated>"
        f"</row><identifiers><envelope_to>{to}</envelope_to><envelope_from>example.com</envelope_from>"
        f"<header_from>example.com</header_from></identifiers><auth_results>"
        f"<dkim><domain>example.com</domain><selector>s2025</selector><result>{dkim_res}</result></dkim>"
        f"<spf><domain>example.com</domain><scope>mfrom</scope><result>{spf_res}</result></spf>"
        f"</auth_results></record>")
    records = "".join([
        rec("192.0.2.10", 40, "none", "pass", "pass", "outlook.com", "pass", "pass"),
        rec("192.0.2.11", 15, "none", "pass", "pass", "hotmail.com", "pass", "pass"),
        rec("198.51.100.23", 2, "quarantine", "fail", "fail", "outlook.com", "fail", "fail"),
        rec("198.51.100.24", 1, "reject", "fail", "fail", "outlook.com", "none", "softfail"),
    ])
    return ('<?xml version="1.0"?>'
            '<feedback xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><version>1.0</version>'
            '<report_metadata><org_name>Enterprise Outlook</org_name>'
            '<email>dmarcreport@microsoft.com</email>'
            '<report_id>0f1e2d3c4b5a69788796a5b4c3d2e1f0</report_id>'
            f'<date_range><begin>{BEGIN}</begin><end>{END}</end></date_range></report_metadata>'
            '<policy_published><domain>example.com</domain><adkim>r</adkim><aspf>r</aspf>'
            '<p>quarantine</p><sp>quarantine</sp><pct>100</pct><fo>0</fo></policy_published>'
            f'{records}</feedback>')


def yahoo():
    return f"""<?xml version="1.0"?>
<feedback>
  <report_metadata>
    <org_name>Yahoo</org_name>
    <email>dmarchelp@yahooinc.com</email>
    <report_id>1763683199.531544</report_id>
    <date_range>
      <begin>{BEGIN}</begin>
      <end>{END}</end>
    </date_range>
  </report_metadata>
  <policy_published>
    <domain>example.com</domain>
    <adkim>r</adkim>
    <aspf>r</aspf>
    <p>quarantine</p>
    <pct>100</pct>
  </policy_published>
  <record>
    <row>
      <source_ip>2001:db8:1::25</source_ip>
      <count>9</count>
      <policy_evaluated>
        <disposition>none</disposition>
        <dkim>fail</dkim>
        <spf>fail</spf>
        <reason>
          <type>forwarded</type>
        </reason>
      </policy_evaluated>
    </row>
    <identifiers>
      <header_from>example.com</header_from>
    </identifiers>
    <auth_results>
      <dkim>
        <domain>example.com</domain>
        <result>fail</result>
      </dkim>
      <spf>
        <domain>forwarder.example.org</domain>
        <result>pass</result>
      </spf>
    </auth_results>
  </record>
  <record>
    <row>
      <source_ip>192.0.2.10</source_ip>
      <count>31</count>
      <policy_evaluated>
        <disposition>none</disposition>
        <dkim>pass</dkim>
        <spf>pass</spf>
      </policy_evaluated>
    </row>
    <identifiers>
      <header_from>example.com</header_from>
    </identifiers>
    <auth_results>
      <dkim>
        <domain>example.com</domain>
        <result>pass</result>
      </dkim>
      <spf>
        <domain>example.com</domain>
        <result>pass</result>
      </spf>
    </auth_results>
  </record>
</feedback>
"""


def write(name, data):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)


stem = f"example.com!{BEGIN}!{END}"
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    entry = zipfile.ZipInfo(f"google.com!{stem}.xml", date_time=(2025, 11, 21, 0, 30, 0))
    entry.compress_type = zipfile.ZIP_DEFLATED
    z.writestr(entry, google())
write(f"google.com!{stem}.zip", buf.getvalue())
# mtime 0: the same bytes on every run.
write(f"enterprise.protection.outlook.com!{stem}.xml.gz",
      gzip.compress(microsoft().encode(), mtime=0))
write(f"yahoo.com!{stem}.xml.gz", gzip.compress(yahoo().encode(), mtime=0))
