// cpp/device/src/device_url.h: the broker URLs of the C++ device, read as edgerun/broker_url.py reads
// them (every client of the project takes the same URLs):
//   mqtt://[USER[:PASSWORD]@]host[:port]      (also tcp://, or host[:port]; port 1883)
//   mqtts://[USER[:PASSWORD]@]host[:port][?ca=CA.pem][&cert=CLIENT.pem&key=CLIENT.key]
//                                             (also ssl://; port 8883)
// USER / PASSWORD and the file paths are percent-decoded ('+' stays a plus). A URL quoted in a
// message has its password replaced by *** (broker_url.redact_broker_url).
#pragma once

#include <string>

#include "device_common.h"

namespace edgerun_device {

struct BrokerUrl {
  std::string host;
  int         port = 1883;
  std::string user, password;
  bool        has_user = false;
  bool        tls = false;
  std::string ca, cert, key;  // mqtts:// only; ca empty: the system's trust store
  std::string text;           // the URL as given, its password replaced by *** (for messages)
};

// The URL as given with its password replaced by *** ("user:***@"), for messages.
std::string redact_broker_url(const std::string& url);

// Parses a broker URL. kExitUsage, saying what to write instead, for another scheme, no host, a bad
// port, a path, a query on a plain URL, an unknown / repeated / empty TLS setting, a file that does
// not exist, or cert= without key= (or the reverse).
Err parse_broker_url(const std::string& url, BrokerUrl* out);

}  // namespace edgerun_device
