// Preloaded into kinesis-mock (NODE_OPTIONS=--require) when LocalStack runs on a host, not in its container:
// kinesis-mock binds every interface and has no setting for it, and a developer's emulator must stay on loopback.
"use strict";
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (args[0] !== null && typeof args[0] === "object") {
    args[0] = { ...args[0], host: "127.0.0.1" };
  } else if (typeof args[1] === "string") {
    args[1] = "127.0.0.1";
  } else {
    args.splice(1, 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
