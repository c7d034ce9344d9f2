// uWebSockets echo server for `ringside-bench compare`: every text or binary message goes back
// as it came (same opcode, same bytes), on one thread, without compression. The limits are set
// so nothing the comparison sends trips them: messages up to 16 MiB, up to 64 MiB queued per
// connection before backpressure drops anything, no idle timeout, no automatic pings.
//
// Usage: uws-echo PORT
//   PORT 0 picks a free one; the line "listening on 127.0.0.1:PORT" says which.
#include "App.h"

#include <cstdio>
#include <cstdlib>
#include <string_view>

struct PerSocketData {};

int main(int argc, char **argv) {
    int port = argc > 1 ? std::atoi(argv[1]) : 0;
    uWS::App()
        .ws<PerSocketData>("/*", {
            .compression = uWS::DISABLED,
            .maxPayloadLength = 16 * 1024 * 1024,
            .idleTimeout = 0,
            .maxBackpressure = 64 * 1024 * 1024,
            .closeOnBackpressureLimit = false,
            .resetIdleTimeoutOnSend = false,
            .sendPingsAutomatically = false,
            .message = [](auto *ws, std::string_view message, uWS::OpCode opCode) {
                // uWS corks the socket around this handler: replies to one read leave in one
                // write.
                ws->send(message, opCode, false);
            },
        })
        .listen("127.0.0.1", port, [](auto *listen_socket) {
            if (listen_socket) {
                int bound = us_socket_local_port(0, (struct us_socket_t *) listen_socket);
                std::printf("listening on 127.0.0.1:%d\n", bound);
                std::fflush(stdout);
            } else {
                std::fprintf(stderr, "uws-echo: cannot listen\n");
                std::exit(1);
            }
        })
        .run();
}
