// cpp/device/src/device_tls.cpp: TLS to the broker (see device_tls.h).
#include "device_tls.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <memory>

namespace edgerun_device {
namespace {

constexpr int kProbeTimeoutS = 3;  // the diagnosing handshake: connect, handshake, first read

// A password callback that answers none, and notes it was asked: without one OpenSSL asks for a
// pass phrase on the terminal, and waits.
thread_local bool g_key_asked_pw = false;
int no_password(char*, int, int, void*) {
  g_key_asked_pw = true;
  return 0;
}

std::string ssl_errors() {
  std::string out;
  for (unsigned long e = ERR_get_error(); e != 0; e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    out += (out.empty() ? "" : "; ") + std::string(buf);
  }
  return out;
}

struct CtxFree { void operator()(SSL_CTX* c) const { SSL_CTX_free(c); } };
struct SslFree { void operator()(SSL* s) const { SSL_free(s); } };
using Ctx = std::unique_ptr<SSL_CTX, CtxFree>;

// A client context with the URL's CA (or the system's) and client certificate; "" or why not.
std::string make_ctx(const BrokerUrl& url, Ctx* out) {
  ERR_clear_error();
  Ctx ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) return "cannot make a TLS context (" + ssl_errors() + ")";
  SSL_CTX_set_default_passwd_cb(ctx.get(), no_password);
  int ok = url.ca.empty() ? SSL_CTX_set_default_verify_paths(ctx.get())
                          : SSL_CTX_load_verify_locations(ctx.get(), url.ca.c_str(), nullptr);
  if (ok != 1) return "ca=" + url.ca + " is not a PEM CA certificate (" + ssl_errors() + ")";
  if (!url.cert.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), url.cert.c_str()) != 1)
      return "cert=" + url.cert + " is not a PEM client certificate (" + ssl_errors() + ")";
    g_key_asked_pw = false;
    if (SSL_CTX_use_PrivateKey_file(ctx.get(), url.key.c_str(), SSL_FILETYPE_PEM) != 1) {
      if (g_key_asked_pw)
        return "key=" + url.key + " is encrypted (it needs a pass phrase, which a URL does not carry): decrypt it "
               "once, openssl pkey -in " + url.key + " -out CLIENT.key, keep that file private, and give key=CLIENT.key";
      const std::string why = ssl_errors();
      if (why.find("key values mismatch") != std::string::npos)
        return "key=" + url.key + " is not the private key of cert=" + url.cert +
               ": give the key made with that certificate";
      return "cert=" + url.cert + " / key=" + url.key + " are not a PEM client certificate and its private key (" +
             why + ")";
    }
    if (SSL_CTX_check_private_key(ctx.get()) != 1)
      return "key=" + url.key + " is not the private key of cert=" + url.cert +
             ": give the key made with that certificate";
  }
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  *out = std::move(ctx);
  return "";
}

bool is_ip(const std::string& host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

int tcp_connect(const std::string& host, int port) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0) return -1;
  int fd = -1;
  for (addrinfo* a = res; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    timeval tv{kProbeTimeoutS, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  return fd;
}

}  // namespace

Err check_tls_files(const BrokerUrl& url) {
  Ctx ctx;
  const std::string why = make_ctx(url, &ctx);
  return why.empty() ? Err::Ok() : fail(kExitUsage, "--broker " + url.text + ": " + why);
}

Err set_tls(struct mosquitto* mosq, const BrokerUrl& url) {
  // No ca=: the system's trust store (libmosquitto wants a CA file or folder: OpenSSL's default one).
  if (url.ca.empty()) mosquitto_int_option(mosq, MOSQ_OPT_TLS_USE_OS_CERTS, 1);
  int rc = mosquitto_tls_set(mosq, url.ca.empty() ? nullptr : url.ca.c_str(),
                             url.ca.empty() ? X509_get_default_cert_dir() : nullptr,
                             url.cert.empty() ? nullptr : url.cert.c_str(), url.key.empty() ? nullptr : url.key.c_str(),
                             no_password);
  if (rc == MOSQ_ERR_SUCCESS) rc = mosquitto_tls_opts_set(mosq, /*SSL_VERIFY_PEER*/ 1, nullptr, nullptr);
  if (rc == MOSQ_ERR_SUCCESS) rc = mosquitto_tls_insecure_set(mosq, false);  // the host name is checked
  if (rc != MOSQ_ERR_SUCCESS)
    return fail(kExitUsage, "--broker " + url.text + ": libmosquitto refused the TLS settings (" +
                            mosquitto_strerror(rc) + ")");
  return Err::Ok();
}

std::string tls_problem(const BrokerUrl& url, const std::string& lib_error) {
  const std::string at = "the MQTT broker at " + url.text;
  const std::string generic = "TLS handshake with " + at + " failed" +
                              (lib_error.empty() ? std::string() : " (" + lib_error + ")") +
                              ": does the broker listen with TLS on that port (else use mqtt://), and does it require "
                              "a client certificate (&cert=CLIENT.pem&key=CLIENT.key)?";
  Ctx ctx;
  if (!make_ctx(url, &ctx).empty()) return generic;
  const int fd = tcp_connect(url.host, url.port);
  if (fd < 0) return generic;
  std::unique_ptr<SSL, SslFree> ssl(SSL_new(ctx.get()));
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl.get());
  if (is_ip(url.host)) {
    X509_VERIFY_PARAM_set1_ip_asc(param, url.host.c_str());
  } else {
    SSL_set_tlsext_host_name(ssl.get(), url.host.c_str());
    SSL_set1_host(ssl.get(), url.host.c_str());
  }
  SSL_set_fd(ssl.get(), fd);
  ERR_clear_error();
  const int hs = SSL_connect(ssl.get());
  const long verify = SSL_get_verify_result(ssl.get());
  std::string said;
  if (hs == 1) {  // TLS 1.3: a broker refuses a client certificate (or its lack) after the handshake
    char byte;
    if (SSL_read(ssl.get(), &byte, 1) <= 0) said = ssl_errors();
  } else {
    said = ssl_errors();
  }
  close(fd);
  if (hs != 1 && verify != X509_V_OK) {
    const std::string why = X509_verify_cert_error_string(verify);
    if (verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH)
      return "TLS: the certificate of " + at + " is not for '" + url.host + "' (" + why + "): connect by a name "
             "the certificate holds (its subjectAltName), or give the broker a certificate for " + url.host;
    if (verify == X509_V_ERR_CERT_NOT_YET_VALID || verify == X509_V_ERR_CERT_HAS_EXPIRED ||
        verify == X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD || verify == X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD)
      return "TLS: " + at + " presented a certificate that is not valid now (" + why + "): renew the broker's "
             "certificate (or its CA's), or, if it should be valid, check this machine's clock (`date`)";
    return "TLS: " + at + " presented a certificate this client does not trust (" + why + "): give the CA that "
           "signed it in the URL, mqtts://host:port?ca=/path/ca.pem";
  }
  if (said.find("alert") != std::string::npos) {  // the broker turned this client down
    std::string what;
    if (said.find("expired") != std::string::npos)
      what = "it says the client certificate has expired: renew cert=" + url.cert + " (or check this machine's "
             "clock, `date`)";
    else if (url.cert.empty())
      what = "does it require a client certificate? then add &cert=CLIENT.pem&key=CLIENT.key to the URL";
    else
      what = "its log says why (a client certificate of another CA?)";
    return at + " closed the connection before accepting it (" + said + "): " + what;
  }
  return hs == 1 ? at + " closed the TLS connection before accepting it" +
                       (lib_error.empty() ? std::string() : " (" + lib_error + ")") + ": its log says why"
                 : generic;
}

}  // namespace edgerun_device
