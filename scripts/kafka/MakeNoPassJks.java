// Writes a JKS truststore whose store password is EMPTY, holding one trusted
// certificate. keytool refuses passwords shorter than 6 characters, so the
// harness runs this with Java's single-file source launcher instead:
//   java MakeNoPassJks.java <cert.pem> <out.jks> <alias>
// Readers can open it with no password (integrity check skipped) or with "".
// Note JKS lower-cases aliases, exactly as keytool does.
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.InputStream;
import java.io.OutputStream;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;

public class MakeNoPassJks {
    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: java MakeNoPassJks.java <cert.pem> <out.jks> <alias>");
            System.exit(2);
        }
        KeyStore ks = KeyStore.getInstance("JKS");
        ks.load(null, null);
        try (InputStream in = new FileInputStream(args[0])) {
            ks.setCertificateEntry(args[2],
                CertificateFactory.getInstance("X.509").generateCertificate(in));
        }
        try (OutputStream out = new FileOutputStream(args[1])) {
            ks.store(out, new char[0]);
        }
    }
}
