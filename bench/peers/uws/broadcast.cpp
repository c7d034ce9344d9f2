// uWebSockets speaking the fan-out protocol of `ringside-load fanout` (docs/broadcast.md):
// `sub <topic>` answered `ok sub <topic>` (`unsub` likewise), `pub <topic> <payload>` delivered
// to every subscriber of the topic, the publisher included. permessage-deflate with uWS's
// SHARED_COMPRESSOR, the setting comparable to Ringside's `--deflate shared`, unless `plain`.
//
// Usage: uws-broadcast PORT [prepared | plain]
//   PORT 0 picks a free one; the line "listening on 127.0.0.1:PORT" says which.
//   prepared: publish with Loop::prepareMessage + App::publishPrepared (compressed once per
//   publish); without it, App::publish(..., compress = true) (compressed per subscriber).
//   plain: no compression offered or used (App::publish(..., compress = false)), the setting
//   comparable to Ringside's broadcast app without `--deflate`.
//
// Built with -DUWS_NO_ZLIB (no zlib needed), uWS disables compression whatever the mode, so
// such a build only serves `plain` (build.sh names it uws-broadcast-plain).
#include "App.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

struct PerSocketData {};

int main(int argc, char **argv) {
    int port = argc > 1 ? std::atoi(argv[1]) : 0;
    bool prepared = argc > 2 && std::strcmp(argv[2], "prepared") == 0;
    bool plain = argc > 2 && std::strcmp(argv[2], "plain") == 0;
    uWS::App *app = nullptr;
    uWS::App server;
    app = &server;
    server.ws<PerSocketData>("/*", {
        .compression = plain ? uWS::DISABLED : uWS::SHARED_COMPRESSOR,
        .maxPayloadLength = 16 * 1024 * 1024,
        .idleTimeout = 0,
        .maxBackpressure = 16 * 1024 * 1024,
        .closeOnBackpressureLimit = false,
        .resetIdleTimeoutOnSend = false,
        .sendPingsAutomatically = false,
        .message = [&app, prepared, plain](auto *ws, std::string_view message, uWS::OpCode) {
            if (message.substr(0, 4) == "sub ") {
                std::string_view topic = message.substr(4);
                ws->subscribe(topic);
                std::string reply = "ok sub ";
                reply.append(topic);
                ws->send(reply, uWS::OpCode::TEXT);
            } else if (message.substr(0, 6) == "unsub ") {
                std::string_view topic = message.substr(6);
                ws->unsubscribe(topic);
                std::string reply = "ok unsub ";
                reply.append(topic);
                ws->send(reply, uWS::OpCode::TEXT);
            } else if (message.substr(0, 4) == "pub ") {
                std::string_view rest = message.substr(4);
                size_t space = rest.find(' ');
                if (space == std::string_view::npos) {
                    ws->send("error pub takes a topic and a payload", uWS::OpCode::TEXT);
                    return;
                }
                std::string_view topic = rest.substr(0, space);
                std::string_view payload = rest.substr(space + 1);
                if (prepared) {
                    uWS::PreparedMessage m =
                        uWS::Loop::get()->prepareMessage(payload, uWS::OpCode::TEXT, true);
                    app->publishPrepared(topic, m);
                } else {
                    app->publish(topic, payload, uWS::OpCode::TEXT, !plain);
                }
            } else {
                ws->send("error unknown command", uWS::OpCode::TEXT);
            }
        },
    }).listen("127.0.0.1", port, [](auto *listen_socket) {
        if (listen_socket) {
            int bound = us_socket_local_port(0, (struct us_socket_t *) listen_socket);
            std::printf("listening on 127.0.0.1:%d\n", bound);
            std::fflush(stdout);
        } else {
            std::fprintf(stderr, "uws-broadcast: cannot listen\n");
            std::exit(1);
        }
    }).run();
}
