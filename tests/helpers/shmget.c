/* Test helper: create a System V shared memory segment and print its id.
 * The segment outlives this process; it lives as long as its IPC
 * namespace does.  Built statically by the tests, run inside a container. */
#include <stdio.h>
#include <sys/ipc.h>
#include <sys/shm.h>

int main(void)
{
    int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
    if (id < 0) {
        perror("shmget");
        return 1;
    }
    printf("%d\n", id);
    return 0;
}
