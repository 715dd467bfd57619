// A tiny TLS server on Java's own TLS stack (JSSE), for tests/test_responder_url.py.
//
// Usage: java StaplingServer KEYSTORE.p12 PASSWORD PORT
// Listens on 127.0.0.1:PORT with the key and chain of the PKCS#12 keystore and answers every
// connection with one line. Stapling is JSSE's own, steered by the system properties the test
// passes: jdk.tls.server.enableStatusRequestExtension, jdk.tls.stapling.responderURI and
// jdk.tls.stapling.responderOverride.

import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLServerSocket;
import javax.net.ssl.SSLSocket;

public final class StaplingServer {
    public static void main(String[] args) throws Exception {
        char[] password = args[1].toCharArray();
        KeyStore keys = KeyStore.getInstance("PKCS12");
        try (InputStream in = new FileInputStream(args[0])) {
            keys.load(in, password);
        }
        KeyManagerFactory managers = KeyManagerFactory.getInstance("PKIX");
        managers.init(keys, password);
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(managers.getKeyManagers(), null, null);
        InetAddress loopback = InetAddress.getByName("127.0.0.1");
        int port = Integer.parseInt(args[2]);
        try (SSLServerSocket server = (SSLServerSocket) context.getServerSocketFactory()
                .createServerSocket(port, 50, loopback)) {
            System.out.println("listening on 127.0.0.1:" + port);
            while (true) {
                serve((SSLSocket) server.accept());
            }
        }
    }

    private static void serve(SSLSocket socket) {
        try (socket; OutputStream out = socket.getOutputStream()) {
            socket.startHandshake();
            out.write("ok\n".getBytes(StandardCharsets.US_ASCII));
        } catch (IOException e) {
            System.out.println("connection failed: " + e.getMessage());
        }
    }
}
