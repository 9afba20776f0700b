// cpp/device/src/device_tls.h: TLS to the broker for the C++ device, as the Python device has it
// (edgerun/transport.py _tls_context / _tls_problem): the broker's certificate checked against the
// URL's ca= (else the system's trust store), its host name included; the client certificate of
// cert= / key= presented when given. libmosquitto does the TLS; OpenSSL is used here to check the
// PEM files first and, when a connection fails, to tell why (a handshake of its own, read back).
#pragma once

#include <string>

#include "device_common.h"
#include "device_url.h"

struct mosquitto;

namespace edgerun_device {

// Loads the URL's PEM files as the TLS connection will: kExitUsage saying what to do when the CA
// is not a PEM certificate, the key is encrypted, or the key is not the certificate's.
Err check_tls_files(const BrokerUrl& url);

// Turns libmosquitto's TLS on for `url`: verify the peer, host name check on, client certificate.
Err set_tls(struct mosquitto* mosq, const BrokerUrl& url);

// Why a TLS connection to the broker failed and what to do about it (one sentence for an error):
// a handshake made here with the same settings says whether the broker's certificate is not
// trusted, not for this host, expired, or whether the broker turned this client's certificate
// (or its lack) down. `lib_error`: what libmosquitto logged, the fallback detail.
std::string tls_problem(const BrokerUrl& url, const std::string& lib_error);

}  // namespace edgerun_device
