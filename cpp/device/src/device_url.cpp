// cpp/device/src/device_url.cpp: broker URLs (see device_url.h; the rules of edgerun/broker_url.py).
#include "device_url.h"

#include <sys/stat.h>

#include <cctype>
#include <cstdlib>
#include <map>

namespace edgerun_device {
namespace {

// Where a TLS query starts: '?' then a name and '=' (a '?' in a password is no query).
size_t query_start(const std::string& url, size_t from) {
  for (size_t q = url.find('?', from); q != std::string::npos; q = url.find('?', q + 1)) {
    size_t i = q + 1;
    while (i < url.size() && (std::isalnum(static_cast<unsigned char>(url[i])) || url[i] == '_')) ++i;
    if (i < url.size() && url[i] == '=') return q;
  }
  return std::string::npos;
}

// Where USER[:PASSWORD] sits: after "://", before the last '@' ahead of the TLS query (a file path
// in the query may hold an '@'). False when the URL has none.
bool userinfo_span(const std::string& url, size_t* start, size_t* end) {
  size_t s = url.find("://");
  s = (s == std::string::npos) ? 0 : s + 3;
  size_t q = query_start(url, s);
  size_t limit = (q == std::string::npos) ? url.size() : q;
  if (limit <= s) return false;
  size_t at = url.rfind('@', limit - 1);
  if (at == std::string::npos || at < s) return false;
  *start = s;
  *end = at;
  return true;
}

int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = char(std::tolower(static_cast<unsigned char>(c)));
  return (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
}

std::string pct_decode(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      out += char(hex(s[i + 1]) * 16 + hex(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

}  // namespace

std::string redact_broker_url(const std::string& url) {
  size_t s = 0, e = 0;
  if (!userinfo_span(url, &s, &e)) return url;
  const std::string info = url.substr(s, e - s);
  const size_t colon = info.find(':');
  const std::string user = info.substr(0, colon);
  return url.substr(0, s) + user + (colon != std::string::npos ? ":***" : "") + url.substr(e);
}

Err parse_broker_url(const std::string& given, BrokerUrl* out) {
  std::string text = trim(given);
  const std::string shown = redact_broker_url(text);
  auto bad = [&](const std::string& why) { return fail(kExitUsage, "--broker " + shown + ": " + why); };
  if (text.empty()) return fail(kExitUsage, "--broker is empty: use e.g. mqtt://127.0.0.1:1883");
  if (text.find("://") == std::string::npos) text = "mqtt://" + text;
  const size_t sep = text.find("://");
  const std::string scheme = lower(text.substr(0, sep));
  if (scheme != "mqtt" && scheme != "tcp" && scheme != "mqtts" && scheme != "ssl")
    return bad("scheme '" + scheme + "': use mqtt://host:port, or mqtts://host:port for TLS (websockets are not "
               "supported)");
  *out = BrokerUrl{};
  out->tls = scheme == "mqtts" || scheme == "ssl";
  out->port = out->tls ? 8883 : 1883;
  out->text = shown;
  size_t us = 0, ue = 0;
  std::string rest = text.substr(sep + 3);
  if (userinfo_span(text, &us, &ue)) {
    const std::string info = text.substr(us, ue - us);
    if (info.find_first_of("/?#") != std::string::npos)
      return bad("its user or password holds '/', '?' or '#': percent-encode them (%2F, %3F, %23; '@' is %40, "
                 "':' in the user %3A)");
    const size_t colon = info.find(':');
    out->has_user = true;
    out->user = pct_decode(info.substr(0, colon));
    if (colon != std::string::npos) out->password = pct_decode(info.substr(colon + 1));
    rest = text.substr(ue + 1);
  }
  // host[:port] [/] [?query] — no other path, no fragment
  std::string query;
  const size_t q = rest.find('?');
  if (q != std::string::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
    if (query.find('#') != std::string::npos)
      return bad(out->tls ? "'#' in a file path starts a URL fragment: percent-encode it as %23"
                          : "it has a fragment: use mqtt://host:port");
  }
  if (rest.find('#') != std::string::npos) return bad("it has a fragment: use mqtt://host:port");
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) {
    if (slash + 1 != rest.size()) return bad("it has a path: use mqtt://host:port");
    rest.pop_back();
  }
  if (q != std::string::npos && !out->tls)
    return bad("it has a query, which only an mqtts:// (TLS) URL takes (?ca=CA.pem&cert=CLIENT.pem&key=CLIENT.key): "
               "use mqtt://host:port, or mqtts://");
  std::string port;
  if (!rest.empty() && rest[0] == '[') {  // [IPv6]
    const size_t close = rest.find(']');
    if (close == std::string::npos) return bad("an IPv6 address needs its closing ']'");
    out->host = rest.substr(1, close - 1);
    std::string after = rest.substr(close + 1);
    if (!after.empty() && after[0] != ':') return bad("use mqtt://[IPv6]:port");
    if (!after.empty()) port = after.substr(1);
    if (after == ":") port = "x";
  } else {
    const size_t colon = rest.rfind(':');
    out->host = rest.substr(0, colon);
    if (colon != std::string::npos) port = rest.substr(colon + 1).empty() ? "x" : rest.substr(colon + 1);
  }
  if (!port.empty()) {
    char* end = nullptr;
    const long p = std::strtol(port.c_str(), &end, 10);
    if (*end != '\0' || p < 1 || p > 65535 || !std::isdigit(static_cast<unsigned char>(port[0])))
      return bad("a bad port: use a number in 1..65535");
    out->port = int(p);
  }
  if (out->host.empty()) return bad("no host: use e.g. mqtt://127.0.0.1:1883");
  if (rest[0] != '[' && out->host.find(':') != std::string::npos)  // "::1" was host ":" on port 1
    return bad("an IPv6 address goes in brackets: use mqtt://[ADDRESS]:PORT, e.g. mqtt://[::1]:1883");
  if (!out->tls) return Err::Ok();

  std::map<std::string, std::string> got;
  size_t i = 0;
  while (!query.empty() && i <= query.size()) {
    size_t amp = query.find('&', i);
    if (amp == std::string::npos) amp = query.size();
    const std::string item = query.substr(i, amp - i);
    i = amp + 1;
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    const std::string k = pct_decode(item.substr(0, eq)), v = eq == std::string::npos ? "" : pct_decode(item.substr(eq + 1));
    if (k != "ca" && k != "cert" && k != "key")
      return bad("unknown setting '" + k + "': an mqtts:// URL takes ?ca=CA.pem (the CA that signed the broker's "
                 "certificate) and &cert=CLIENT.pem&key=CLIENT.key (a client certificate, for a broker that "
                 "requires one)");
    if (got.count(k) || v.empty()) return bad("give " + k + "= once, with a file path");
    struct stat st {};
    if (stat(v.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
      return bad(k + "=" + v + " is " + (stat(v.c_str(), &st) == 0 && S_ISDIR(st.st_mode) ? "a folder" : "not a file") +
                 (v[0] == '/' ? "" : " (a relative path is taken from the working directory)") +
                 ": give the path of the PEM file");
    got[k] = v;
  }
  if (got.count("cert") != got.count("key"))
    return bad("a client certificate needs both cert= and key= (the PEM certificate and its private key)");
  out->ca = got["ca"];
  out->cert = got["cert"];
  out->key = got["key"];
  return Err::Ok();
}

}  // namespace edgerun_device
