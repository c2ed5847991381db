# A perl workload for the LD_PRELOAD check: hash and regex churn, string growth, and
# ithreads when this perl has them. Deterministic output (sorted keys).
use strict;
use warnings;
use Config;
use Digest::MD5 qw(md5_hex);

sub churn {
    my ($seed) = @_;
    my %h;
    for my $i (1 .. 80000) {
        my $k = "k" . (($i * $seed) % 7919);
        $h{$k} .= chr(65 + $i % 26);
        delete $h{"k" . ($i % 50)} if $i % 97 == 0;
    }
    my $text = join ",", map { "$_=$h{$_}" } sort keys %h;
    my $n = () = $text =~ /k\d+=[A-F]+/g;
    (my $t2 = $text) =~ s/([A-Z])\1/$1/g;
    return sprintf "%d %d %s", scalar(keys %h), $n, md5_hex($t2);
}

if ($Config{useithreads}) {
    require threads;
    my @t = map { my $s = $_; threads->create(sub { churn($s) }) } 1 .. 4;
    print "thread $_: ", $t[$_ - 1]->join, "\n" for 1 .. 4;
} else {
    print "thread $_: ", churn($_), "\n" for 1 .. 4;
}
my $big = "x" x (32 << 20);
$big =~ s/x{1000}/y/g;
print "big ", length($big), "\n";
